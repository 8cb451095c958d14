//! Volumes held to real programs (sh, cat, curl): configMap (read-only), secret, emptyDir
//! shared by two containers, hostPath, and a projected service-account token that the API
//! server accepts, each at its mountPath in the container's own mount namespace, invisible
//! to this machine, and gone with the pod.

mod common;

use common::{Sim, poll};

#[test]
fn volumes_appear_at_their_mount_paths_only_in_the_pod() {
    let sim = Sim::start();
    std::fs::write(sim.dir.path().join("from-host.txt"), "host file\n").unwrap();
    let manifest = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data: {{greeting: hello, "app.conf": "mode=test\n"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: sec}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: vols}}
spec:
  serviceAccountName: builder
  volumes:
  - {{name: cfg, configMap: {{name: cfg, items: [{{key: greeting, path: say/greeting}}]}}}}
  - {{name: sec, secret: {{secretName: sec}}}}
  - {{name: cache, emptyDir: {{}}}}
  - {{name: host, hostPath: {{path: "{host}", type: Directory}}}}
  # As the agent Job's runtime sockets: missing, no type: not mounted, not created.
  - {{name: nosock, hostPath: {{path: /run/remora-sim-missing.sock}}}}
  - name: api
    projected:
      sources:
      - serviceAccountToken: {{path: token}}
      - downwardAPI: {{items: [{{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}]}}
  containers:
  - name: writer
    image: busybox
    command:
    - sh
    - -c
    - |
      echo greeting=$(cat /etc/remora-sim-cfg/say/greeting)
      echo password=$(cat /run/remora-sim-secret/password)
      echo host=$(cat /mnt/remora-sim-host/from-host.txt)
      SA=/var/run/secrets/kubernetes.io/serviceaccount
      echo namespace=$(cat $SA/namespace)
      curl -sS -o /dev/null -w 'api=%{{http_code}}\n' -H "Authorization: Bearer $(cat $SA/token)" \
        http://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/pods
      touch /etc/remora-sim-cfg/new 2>/dev/null || echo config=read-only
      [ -e /run/remora-sim-missing.sock ] || echo nosock=absent
      echo shared > /tmp/remora-sim-cache/file
      exec sleep 1000
    volumeMounts:
    - {{name: cfg, mountPath: /etc/remora-sim-cfg, readOnly: true}}
    - {{name: sec, mountPath: /run/remora-sim-secret}}
    - {{name: cache, mountPath: /tmp/remora-sim-cache}}
    - {{name: host, mountPath: /mnt/remora-sim-host}}
    - {{name: api, mountPath: /var/run/secrets/kubernetes.io/serviceaccount}}
    - {{name: nosock, mountPath: /run/remora-sim-missing.sock}}
  - name: reader
    image: busybox
    workingDir: /tmp
    command: [sh, -c, "until [ -f data/file ]; do sleep 0.1; done; echo reader=$(cat data/file); exec sleep 1000"]
    volumeMounts:
    - {{name: cache, mountPath: /tmp/data}}
"#,
        host = sim.dir.path().display()
    );
    sim.apply_yaml(&manifest, &[]);
    sim.ok(&["wait", "--for=condition=Ready", "pod/vols", "--timeout=30s"]);
    poll(
        || {
            sim.ok(&["logs", "vols", "-c", "reader"])
                .contains("reader=shared")
        },
        "the reader to see the writer's file in the shared emptyDir",
    );
    let logs = sim.ok(&["logs", "vols", "-c", "writer"]);
    for line in [
        "greeting=hello",
        "password=s3cret",
        "host=host file",
        "namespace=default",
        "api=200",
        "config=read-only",
        "nosock=absent",
    ] {
        assert!(logs.contains(line), "{line:?} in {logs}");
    }
    // This machine sees none of it.
    for path in [
        "/etc/remora-sim-cfg",
        "/run/remora-sim-secret",
        "/tmp/remora-sim-cache",
        "/mnt/remora-sim-host",
        "/var/run/secrets/kubernetes.io",
        "/run/remora-sim-missing.sock",
    ] {
        assert!(!std::path::Path::new(path).exists(), "{path} on the host");
    }
    let uid = sim.ok(&["get", "pod", "vols", "-o", "jsonpath={.metadata.uid}"]);
    let volumes = sim.state_dir().join("volumes").join(&uid);
    assert!(volumes.is_dir());
    sim.ok(&["delete", "pod", "vols"]);
    poll(|| !volumes.exists(), "the pod's volumes to be removed");
    assert!(
        sim.dir.path().join("from-host.txt").exists(),
        "a hostPath is never removed"
    );
}

#[test]
fn a_missing_config_map_keeps_the_pod_waiting_until_it_exists() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: late}
spec:
  volumes: [{name: cfg, configMap: {name: late-cfg}}]
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "cat /etc/remora-sim-late/key; exec sleep 1000"]
    volumeMounts: [{name: cfg, mountPath: /etc/remora-sim-late}]
"#,
        &[],
    );
    poll(
        || {
            sim.ok(&[
                "get",
                "pod",
                "late",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
            ]) == "CreateContainerConfigError"
        },
        "the pod to wait for its configMap",
    );
    sim.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late-cfg}\ndata: {key: arrived}\n",
        &[],
    );
    sim.ok(&["wait", "--for=condition=Ready", "pod/late", "--timeout=30s"]);
    poll(
        || sim.ok(&["logs", "late"]).contains("arrived"),
        "the container to read the configMap",
    );
}
