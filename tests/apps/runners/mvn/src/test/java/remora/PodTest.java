// Run by `remora test -- mvn test`: the test (in surefire's forked JVM) sees
// the pod's env and files.
package remora;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.nio.file.Files;
import java.nio.file.Paths;
import org.junit.Test;

public class PodTest {
  @Test
  public void seesThePodsEnv() {
    assertEquals("s3cr3t-from-the-pod", System.getenv("APP_SECRET"));
  }

  @Test
  public void readsAPodFile() throws Exception {
    String text = new String(Files.readAllBytes(Paths.get("/etc/checkout/config.yaml")), "UTF-8");
    assertTrue(text, text.startsWith("feature_flags:\n"));
  }
}
