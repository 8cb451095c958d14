//! The demo's Kubernetes act: the test cluster `remora-kube-sim` (a real API
//! server for kubectl, pods as namespaced processes of this machine), a small
//! shop in namespace `shop` (a storefront deployment with a configMap file, a
//! configMap value and a secret in its environment; a payments deployment
//! behind a service), and one local script run twice, without and with
//! `remora run --target deployment/storefront`. The cluster is stopped on
//! every way out (it removes its pods, namespaces, veths and cgroups itself);
//! `--exit-with-parent` covers this demo being killed.

use remora_tests::bin_path;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The shop. Its containers run host programs (the sim records images, it
/// does not pull them); volumes, the cluster DNS and the service's cluster IP
/// (port 80, relayed to the pod's 8080) make the pod's view.
const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: storefront-config, namespace: shop}
data:
  CURRENCY: EUR
  shop.toml: |
    # storefront settings, from configMap storefront-config
    payments_url = "http://payments"
---
apiVersion: v1
kind: Secret
metadata: {name: storefront-db, namespace: shop}
stringData: {password: s3cr3t-from-the-cluster}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: storefront, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: storefront}}
  template:
    metadata: {labels: {app: storefront}}
    spec:
      containers:
      - name: web
        image: registry.shop.example/storefront:1.0
        command: ["sleep", "infinity"]
        env:
        - name: CURRENCY
          valueFrom: {configMapKeyRef: {name: storefront-config, key: CURRENCY}}
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: storefront-db, key: password}}
        volumeMounts:
        - {name: config, mountPath: /etc/storefront, readOnly: true}
      volumes:
      - name: config
        configMap: {name: storefront-config, items: [{key: shop.toml, path: shop.toml}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: payments, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: payments}}
  template:
    metadata: {labels: {app: payments}}
    spec:
      containers:
      - name: api
        image: registry.shop.example/payments:1.0
        command: ["sh", "-c", "echo 'payments: ok' > /srv/payments/health && exec python3 -m http.server 8080 --directory /srv/payments"]
        readinessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 1
        volumeMounts:
        - {name: www, mountPath: /srv/payments}
      volumes:
      - {name: www, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  selector: {app: payments}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// The demo's directory (kubeconfig, the sim's log) is `$TMPDIR/<prefix><pid>`.
const DIR_PREFIX: &str = "remora-demo-kube-";

/// Removes the directories of earlier demos that were killed (SIGKILL skips
/// every drop; their clusters shut down by themselves, `--exit-with-parent`).
fn sweep_dirs_of_dead_demos() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(DIR_PREFIX)
            && pid.parse::<u32>().is_ok()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A `remora-kube-sim serve` child: SIGTERMed and waited for on drop (it then
/// stops its pods and removes everything it made); its directory goes too.
struct Cluster {
    child: Child,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let sim = bin_path("remora-kube-sim")?;
        // The agent Job's container runs `remora-agent`: found on the sim's PATH.
        let bin_dir = bin_path("remora-agent")?
            .parent()
            .ok_or("no bin dir")?
            .to_owned();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        sweep_dirs_of_dead_demos();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        let log = std::fs::File::create(dir.join("sim.log"))?;
        let child = Command::new(&sim)
            .args(["serve", "--exit-with-parent", "--kubeconfig"])
            .arg(&kubeconfig)
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut cluster = Cluster {
            child,
            dir,
            kubeconfig,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster.kubeconfig.exists() {
            if let Some(status) = cluster.child.try_wait()? {
                let log = std::fs::read_to_string(cluster.dir.join("sim.log")).unwrap_or_default();
                return Err(format!("remora-kube-sim exited ({status}):\n{log}").into());
            }
            if Instant::now() > deadline {
                return Err("remora-kube-sim wrote no kubeconfig within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|e| format!("running kubectl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn remora_run(&self, target: &str, command: &[&str]) -> Result<Output> {
        Ok(Command::new(bin_path("remora")?)
            .arg("run")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", "shop", "--target", target, "--"])
            .args(command)
            .output()?)
    }
}

/// The script both runs execute. The plain run resolves `payments` only from
/// this machine's files (`getent -s files`), so it never asks this machine's
/// DNS servers about a cluster name; with remora the layer answers the lookup
/// from the pod (its cluster DNS), whatever the NSS source.
const SCRIPT: &str = r#"echo "hostname:          $(hostname)"
echo "CURRENCY:          ${CURRENCY:-<unset>}"
echo "DB_PASSWORD:       ${DB_PASSWORD:-<unset>}"
echo "/etc/storefront/shop.toml: $(grep payments_url /etc/storefront/shop.toml 2>&1)"
ip=$(getent -s files ahosts payments | awk 'NR==1 {print $1}')
echo "resolve payments:  ${ip:-<not found>}"
if [ -n "$ip" ]; then
    echo "GET http://payments/health: $(curl -sS -m 5 http://payments/health 2>&1)"
else
    echo "GET http://payments/health: <no address>"
fi"#;

/// The act; `Ok(false)` when remora did not show the pod's view.
pub fn act() -> Result<bool> {
    println!("\n==> Kubernetes: starting the test cluster remora-kube-sim");
    let cluster = Cluster::start()?;
    println!(
        "    kubeconfig {} (context remora-sim)",
        cluster.kubeconfig.display()
    );
    let manifest = cluster.dir.join("shop.yaml");
    std::fs::write(&manifest, SHOP)?;
    println!(
        "    $ kubectl apply -f shop.yaml   # namespace shop: 2 deployments, a service, a configmap, a secret"
    );
    print!(
        "{}",
        super::indent(&cluster.kubectl(&["apply", "-f", &manifest.to_string_lossy()])?)
    );
    cluster.kubectl(&[
        "-n",
        "shop",
        "wait",
        "--for=condition=Available",
        "deployment/storefront",
        "deployment/payments",
        "--timeout=120s",
    ])?;
    println!("    $ kubectl -n shop get pods,services");
    print!(
        "{}",
        super::indent(&cluster.kubectl(&["-n", "shop", "get", "pods,services"])?)
    );

    println!("\n==> without remora: bash -c '...'");
    let plain = Command::new("bash").args(["-c", SCRIPT]).output()?;
    print!("{}", super::indent(&String::from_utf8_lossy(&plain.stdout)));

    println!(
        "\n==> with remora: remora run -n shop --target deployment/storefront -- bash -c '...'"
    );
    let remote = cluster.remora_run("deployment/storefront", &["bash", "-c", SCRIPT])?;
    let seen = String::from_utf8_lossy(&remote.stdout).into_owned();
    print!("{}", super::indent(&seen));
    eprint!("{}", String::from_utf8_lossy(&remote.stderr));
    let pod = cluster.kubectl(&[
        "-n",
        "shop",
        "get",
        "pods",
        "-l",
        "app=storefront",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    let ok = remote.status.success()
        && seen.contains(&format!("hostname:          {pod}"))
        && seen.contains("CURRENCY:          EUR")
        && seen.contains("s3cr3t-from-the-cluster")
        && seen.contains("payments_url = \"http://payments\"")
        && seen.contains("payments/health: payments: ok");

    // remora deletes its agent Job when the command ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let left = cluster.kubectl(&[
            "-n",
            "shop",
            "get",
            "jobs,pods",
            "-l",
            "app.kubernetes.io/name=remora-agent",
            "-o",
            "name",
        ])?;
        if left.trim().is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "    the agent Job remora started in the cluster: {}",
        if left.trim().is_empty() {
            "deleted after the run".to_owned()
        } else {
            format!("still there! {}", left.trim())
        }
    );
    println!("\n==> cleaning up: kubectl delete namespace shop, stopping the cluster");
    cluster.kubectl(&["delete", "namespace", "shop", "--timeout=60s"])?;
    drop(cluster);
    Ok(ok && left.trim().is_empty())
}
