// A Go test for `remora test -- go test` (tests/tests/workflows_local.rs):
// the test binary runs through `remora runner` (`go test -exec`), which
// starts it under the seccomp supervisor (Go makes system calls without
// libc), and prints what it got from the session: the pod's environment and
// the first line of a file only the pod has.
package remoragotest

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestSeesThePodsEnvironmentAndFiles(t *testing.T) {
	secret := os.Getenv("APP_SECRET")
	if secret == "" {
		t.Fatal("APP_SECRET is not set: the test binary is not in the session")
	}
	config, err := os.ReadFile("/etc/checkout/config.yaml")
	if err != nil {
		t.Fatalf("the pod's config file: %v", err)
	}
	first := strings.SplitN(string(config), "\n", 2)[0]
	fmt.Printf("REPORT secret=%s config=%s layer_preloaded=%v\n", secret, first,
		strings.Contains(os.Getenv("LD_PRELOAD"), "libremora_layer"))
}
