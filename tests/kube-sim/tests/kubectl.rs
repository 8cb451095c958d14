//! The simulator held to the real `kubectl`: apply (client- and server-side), get, selectors,
//! patches, rollouts, logs, watches, CRDs with printer columns, cascading delete, cleanup.

mod common;

use std::process::{Command, Stdio};

use common::{Sim, link_ids_of_subnet, links_still_there, poll, processes_of};

const SHOP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: shop-config, labels: {app: shop, tier: config}}
data: {GREETING: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-secret, labels: {app: shop}}
stringData: {TOKEN: s3cret}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: shop, tier: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "echo greeting=$GREETING token=$TOKEN mode=$MODE pod=$POD; exec sleep 1000"]
        env:
        - {name: MODE, value: one}
        - name: GREETING
          valueFrom: {configMapKeyRef: {name: shop-config, key: GREETING}}
        - name: POD
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        envFrom:
        - secretRef: {name: shop-secret}
"#;

fn names(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
fn apply_get_selectors_and_patches() {
    let sim = Sim::start();
    let out = sim.apply_yaml(SHOP, &[]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    // A second client-side apply with a change is a strategic merge patch.
    let changed = SHOP.replace("{name: MODE, value: one}", "{name: MODE, value: two}");
    let out = sim.apply_yaml(&changed, &[]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("configmap/shop-config unchanged"), "{out}");
    let d = sim.json(&["get", "deployment", "web"]);
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "two"
    );
    assert!(d["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(d["metadata"]["resourceVersion"].as_str().is_some());
    // Server-side apply.
    let out = sim.apply_yaml(
        &changed.replace("replicas: 2", "replicas: 3"),
        &["--server-side"],
    );
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(
        sim.json(&["get", "deployment", "web"])["spec"]["replicas"],
        3
    );

    // Label and field selectors.
    let sel = |args: &[&str]| {
        names(&sim.ok(&[&["get", "cm,secret,deploy", "-o", "name"], args].concat()))
    };
    assert_eq!(
        sel(&["-l", "app=shop,tier=config"]),
        ["configmap/shop-config"]
    );
    assert_eq!(
        sel(&["-l", "app in (shop),tier notin (config,web)"]),
        ["secret/shop-secret"]
    );
    assert_eq!(sel(&["-l", "app,!tier"]), ["secret/shop-secret"]);
    assert_eq!(
        sel(&["-l", "tier!=config,app=shop"]),
        ["deployment.apps/web", "secret/shop-secret"]
    );
    assert_eq!(
        names(&sim.ok(&[
            "get",
            "cm",
            "-o",
            "name",
            "--field-selector",
            "metadata.name=shop-config"
        ])),
        ["configmap/shop-config"]
    );

    // The three kinds of patch.
    sim.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ]);
    sim.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":1}]"#,
    ]);
    sim.ok(&["patch", "deployment", "web", "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"EXTRA","value":"x"}]}]}}}}"#]);
    let d = sim.json(&["get", "deployment", "web"]);
    assert_eq!(d["metadata"]["labels"]["merged"], "yes");
    assert_eq!(d["spec"]["replicas"], 1);
    let env: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        ["MODE", "GREETING", "POD", "EXTRA"],
        "strategic merge keeps env by name"
    );
    sim.ok(&["scale", "deployment", "web", "--replicas=2"]);
    assert_eq!(
        sim.json(&["get", "deployment", "web"])["spec"]["replicas"],
        2
    );
    // A stale update is a conflict.
    let mut stale = sim.json(&["get", "cm", "shop-config"]);
    sim.ok(&[
        "patch",
        "cm",
        "shop-config",
        "--type=merge",
        "-p",
        r#"{"data":{"x":"1"}}"#,
    ]);
    stale["data"]["y"] = "2".into();
    let path = sim.dir.path().join("stale.json");
    std::fs::write(&path, stale.to_string()).unwrap();
    let out = sim.kubectl(&["replace", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the object has been modified"));
}

#[test]
fn rollout_env_logs_and_cascading_delete() {
    let sim = Sim::start();
    sim.apply_yaml(SHOP, &[]);
    sim.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=web",
        "--timeout=30s",
    ]);
    let pods = sim.json(&["get", "pods", "-l", "app=web"]);
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for p in items {
        assert_eq!(p["status"]["phase"], "Running");
        let id = p["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap();
        assert!(id.starts_with("remora-sim://"), "{id}");
    }
    let pod = items[0]["metadata"]["name"].as_str().unwrap().to_owned();
    poll(
        || {
            sim.ok(&["logs", &pod])
                .contains("greeting=hello token=s3cret mode=one")
        },
        "the pod's log",
    );
    assert!(sim.ok(&["logs", &pod]).contains(&format!("pod={pod}")));
    let table = sim.ok(&["get", "pods"]);
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]),
        "{table}"
    );
    assert!(
        table.contains("1/1") && table.contains("Running"),
        "{table}"
    );

    // `set env` rolls the pods.
    sim.ok(&["set", "env", "deployment/web", "MODE=two"]);
    sim.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    poll(
        || {
            let pods = sim.json(&["get", "pods", "-l", "app=web"]);
            let items = pods["items"].as_array().unwrap().clone();
            items.len() == 2
                && items.iter().all(|p| {
                    let name = p["metadata"]["name"].as_str().unwrap();
                    sim.kubectl(&["logs", name])
                        .stdout
                        .windows(8)
                        .any(|w| w == b"mode=two")
                })
        },
        "the pods to restart with MODE=two",
    );
    sim.ok(&["rollout", "restart", "deployment/web"]);
    sim.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    poll(
        || sim.json(&["get", "rs"])["items"].as_array().unwrap().len() == 3,
        "a third replica set",
    );

    let state = sim.state_dir();
    assert!(
        !processes_of(&state).is_empty(),
        "containers run as processes"
    );
    sim.ok(&["delete", "deployment", "web"]);
    poll(
        || {
            sim.json(&["get", "rs,pods"])["items"]
                .as_array()
                .unwrap()
                .is_empty()
        },
        "cascading delete",
    );
    poll(
        || processes_of(&state).is_empty(),
        "the containers' processes to end",
    );
}

#[test]
fn watch_shows_changes() {
    let sim = Sim::start();
    let out_path = sim.dir.path().join("watch.out");
    let mut watcher = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&sim.kubeconfig)
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll(
        || {
            std::fs::read_to_string(&out_path)
                .unwrap_or_default()
                .contains("kube-root-ca.crt")
        },
        "the initial list",
    );
    sim.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b}\n",
        &[],
    );
    sim.ok(&["delete", "configmap", "watched"]);
    poll(
        || {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            text.lines()
                .any(|l| l.starts_with("ADDED") && l.contains("watched"))
                && text
                    .lines()
                    .any(|l| l.starts_with("DELETED") && l.contains("watched"))
        },
        "ADDED and DELETED events",
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn crd_with_printer_columns_and_status() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.shop.example.com}
spec:
  group: shop.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Phase, type: string, jsonPath: .status.phase}
"#,
        &[],
    );
    sim.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.shop.example.com",
        "--timeout=30s",
    ]);
    sim.apply_yaml(
        "apiVersion: shop.example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {color: red}\n",
        &[],
    );
    sim.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Shiny"}}"#,
    ]);
    // A status in the main resource is ignored, as with a real status subresource.
    sim.ok(&[
        "patch",
        "wd",
        "w1",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Ignored"},"spec":{"color":"blue"}}"#,
    ]);
    let table = sim.ok(&["get", "widgets"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "COLOR", "PHASE", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["w1", "blue", "Shiny"], "{table}");
    // Cluster-scoped custom resources too.
    sim.apply_yaml(r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: zones.shop.example.com}
spec:
  group: shop.example.com
  scope: Cluster
  names: {plural: zones, singular: zone, kind: Zone}
  versions:
  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
"#, &[]);
    sim.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/zones.shop.example.com",
        "--timeout=30s",
    ]);
    sim.apply_yaml(
        "apiVersion: shop.example.com/v1\nkind: Zone\nmetadata: {name: z1}\n",
        &[],
    );
    assert_eq!(
        sim.json(&["get", "zone", "z1"])["metadata"].get("namespace"),
        None
    );
    sim.ok(&["delete", "crd", "widgets.shop.example.com"]);
    let out = sim.kubectl(&["get", "widgets.shop.example.com"]);
    assert!(!out.status.success(), "the type is gone with its CRD");
}

#[test]
fn job_completes_and_logs_follow() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: busybox, command: ["sh", "-c", "echo one; sleep 0.5; echo two"]}
"#,
        &[],
    );
    let followed = sim.ok(&["logs", "-f", "job/once", "--pod-running-timeout=30s"]);
    assert!(followed.contains("one\ntwo"), "{followed}");
    sim.ok(&[
        "wait",
        "--for=condition=Complete",
        "job/once",
        "--timeout=30s",
    ]);
    let job = sim.json(&["get", "job", "once"]);
    assert_eq!(job["status"]["succeeded"], 1);
    let pods = sim.json(&["get", "pods", "-l", "job-name=once"]);
    assert_eq!(pods["items"][0]["status"]["phase"], "Succeeded");
    assert_eq!(
        pods["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
}

#[test]
fn job_selector_is_generated_from_its_uid() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: worker}
spec:
  template:
    metadata: {labels: {app: worker}}
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: busybox, command: ["sleep", "1000"]}
"#,
        &[],
    );
    let job = sim.json(&["get", "job", "worker"]);
    let uid = job["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(
        job["spec"]["selector"],
        serde_json::json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"],
        serde_json::json!({
            "app": "worker",
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": "worker",
            "controller-uid": uid,
            "job-name": "worker",
        })
    );
    assert_eq!(job["spec"]["completions"], 1);
    assert_eq!(job["spec"]["parallelism"], 1);
    assert_eq!(job["spec"]["backoffLimit"], 6);
    // The Job's own selector finds its pod, as kubectl describe shows.
    let selector = format!("batch.kubernetes.io/controller-uid={uid}");
    poll(
        || {
            sim.ok(&["get", "pods", "-l", &selector, "-o", "name"])
                .lines()
                .count()
                == 1
        },
        "the job's pod, by the generated selector",
    );
    let described = sim.ok(&["describe", "job", "worker"]);
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("Selector:") && l.trim_end().ends_with(&selector)),
        "{described}"
    );

    // A selector of one's own needs manualSelector, as on a real server.
    let path = sim.dir.path().join("manual.yaml");
    let manual = |flag: &str| {
        format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: manual}}
spec:
  {flag}
  selector: {{matchLabels: {{app: manual}}}}
  template:
    metadata: {{labels: {{app: manual}}}}
    spec:
      restartPolicy: Never
      containers:
      - {{name: main, image: busybox, command: ["sleep", "1000"]}}
"#
        )
    };
    std::fs::write(&path, manual("")).unwrap();
    let out = sim.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success(), "a hand-made selector is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`selector` not auto-generated"), "{err}");
    std::fs::write(&path, manual("manualSelector: true")).unwrap();
    sim.ok(&["apply", "-f", path.to_str().unwrap()]);
    let job = sim.json(&["get", "job", "manual"]);
    assert_eq!(
        job["spec"]["selector"],
        serde_json::json!({"matchLabels": {"app": "manual"}})
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"],
        serde_json::json!({"app": "manual"})
    );
}

const SLEEPERS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleepers}
spec:
  replicas: 2
  selector: {matchLabels: {app: sleepers}}
  template:
    metadata: {labels: {app: sleepers}}
    spec:
      containers:
      - {name: main, image: busybox, command: ["sh", "-c", "sleep 1000 & wait"]}
"#;

#[test]
fn nothing_left_after_sigterm() {
    let mut sim = Sim::start();
    sim.apply_yaml(SLEEPERS, &[]);
    sim.ok(&["rollout", "status", "deployment/sleepers", "--timeout=30s"]);
    let state = sim.state_dir();
    poll(
        || processes_of(&state).len() >= 4,
        "two shells and two sleeps",
    );
    let cgroup = sim.cgroup();
    assert!(cgroup.is_dir(), "the run has its cgroup");
    let subnet = std::fs::read_to_string(state.join("subnet")).unwrap();
    assert_eq!(
        sim.links().len(),
        3,
        "a bridge and two veths: {:?}",
        sim.links()
    );
    let links = link_ids_of_subnet(subnet.trim());
    sim.terminate();
    assert!(
        processes_of(&state).is_empty(),
        "no container process survives SIGTERM"
    );
    assert!(!state.exists(), "the state dir is removed");
    assert!(!cgroup.exists(), "the run's cgroups are removed");
    assert_eq!(
        links_still_there(subnet.trim(), &links),
        Vec::new(),
        "no bridge, no veth"
    );
}

#[test]
fn restart_after_sigkill_sweeps_leftovers() {
    let mut sim = Sim::start();
    sim.apply_yaml(SLEEPERS, &[]);
    sim.ok(&["rollout", "status", "deployment/sleepers", "--timeout=30s"]);
    let state = sim.state_dir();
    poll(
        || processes_of(&state).len() >= 4,
        "two shells and two sleeps",
    );
    let cgroup = sim.cgroup();
    let subnet = std::fs::read_to_string(state.join("subnet")).unwrap();
    sim.child.kill().unwrap();
    sim.child.wait().unwrap();
    assert!(
        !processes_of(&state).is_empty(),
        "SIGKILL leaves the containers behind"
    );
    assert!(cgroup.is_dir(), "and their cgroups");
    let links = link_ids_of_subnet(subnet.trim());
    assert_eq!(links.len(), 3, "and their bridge and veths: {links:?}");
    let _next = Sim::start();
    assert!(
        processes_of(&state).is_empty(),
        "the next start kills the leftovers"
    );
    assert!(!state.exists(), "and removes their state dir");
    assert!(!cgroup.exists(), "and their cgroups");
    assert_eq!(
        links_still_there(subnet.trim(), &links),
        Vec::new(),
        "and their network"
    );
}

#[test]
fn exits_and_cleans_up_when_its_parent_dies() {
    // A shell starts the simulator with --exit-with-parent and is then SIGKILLed, as a
    // test process killed by a signal would be.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut parent = Command::new("sh")
        .args([
            "-c",
            r#""$0" serve --kubeconfig "$1" --exit-with-parent >/dev/null & echo $!; wait"#,
            env!("CARGO_BIN_EXE_remora-kube-sim"),
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid: u32 = line.trim().parse().expect("the simulator's pid");
    poll(|| kubeconfig.exists(), "the kubeconfig to appear");
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let manifest = dir.path().join("sleepers.yaml");
    std::fs::write(&manifest, SLEEPERS).unwrap();
    kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    kubectl(&["rollout", "status", "deployment/sleepers", "--timeout=30s"]);
    let state = std::env::temp_dir().join(format!("remora-kube-sim-{pid}"));
    let cgroup = common::cgroup2_mount().join(format!("remora-kube-sim-{pid}"));
    poll(
        || processes_of(&state).len() >= 4,
        "two shells and two sleeps",
    );
    let subnet = std::fs::read_to_string(state.join("subnet")).unwrap();
    let links = link_ids_of_subnet(subnet.trim());
    assert_eq!(links.len(), 3, "a bridge and two veths: {links:?}");

    parent.kill().unwrap();
    parent.wait().unwrap();
    poll(
        || !remora_kube_sim::run_alive(pid) && !state.exists(),
        "the orphaned simulator to shut down",
    );
    assert!(
        processes_of(&state).is_empty(),
        "no container process survives its simulator"
    );
    assert!(!cgroup.exists(), "the run's cgroups are removed");
    assert_eq!(
        links_still_there(subnet.trim(), &links),
        Vec::new(),
        "no bridge, no veth"
    );
}

#[test]
fn statefulset_ordered_names_and_service_endpoints() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - {name: main, image: busybox, command: ["sleep", "1000"]}
"#,
        &[],
    );
    sim.ok(&["rollout", "status", "statefulset/db", "--timeout=30s"]);
    poll(
        || names(&sim.ok(&["get", "pods", "-o", "name"])) == ["pod/db-0", "pod/db-1"],
        "db-0 and db-1",
    );
    poll(
        || {
            let ep = sim.json(&["get", "endpoints", "db"]);
            ep["subsets"][0]["addresses"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
                && ep["subsets"][0]["ports"][0]["port"] == 5432
        },
        "two ready endpoints",
    );
    assert!(
        sim.json(&["get", "svc", "db"])["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.215.")
    );
    sim.ok(&["scale", "statefulset", "db", "--replicas=1"]);
    poll(
        || names(&sim.ok(&["get", "pods", "-o", "name"])) == ["pod/db-0"],
        "scale down from the highest ordinal",
    );
}

#[test]
fn reviews_are_answered_and_recorded() {
    let sim = Sim::start();
    let token = std::fs::read_to_string(&sim.kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_owned))
        .unwrap();
    let path = sim.dir.path().join("review.json");
    std::fs::write(
        &path,
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}})
        .to_string(),
    )
    .unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&sim.ok(&["create", "-f", path.to_str().unwrap(), "-o", "json"]))
            .unwrap();
    assert_eq!(out["status"]["authenticated"], true);
    std::fs::write(
        &path,
        serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "resourceAttributes": {"verb": "delete", "resource": "pods"}}})
        .to_string(),
    )
    .unwrap();
    let review = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&sim.ok(&["create", "-f", path.to_str().unwrap(), "-o", "json"]))
            .unwrap()
    };
    // alice is a user RBAC decides for (as with a `remora-sim-user:alice` token), with no
    // role yet; then a ClusterRole bound to her allows it.
    assert_eq!(review(&path)["status"]["allowed"], false);
    let rbac = sim.dir.path().join("rbac.yaml");
    std::fs::write(
        &rbac,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: pod-deleter}
rules: [{apiGroups: [""], resources: [pods], verbs: [delete]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-deletes-pods}
subjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: ClusterRole, name: pod-deleter, apiGroup: rbac.authorization.k8s.io}
"#,
    )
    .unwrap();
    sim.ok(&["apply", "-f", rbac.to_str().unwrap()]);
    assert_eq!(review(&path)["status"]["allowed"], true);
    // Service accounts stay allowed everything.
    std::fs::write(
        &path,
        serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:default:bob",
                 "resourceAttributes": {"verb": "delete", "resource": "pods"}}})
        .to_string(),
    )
    .unwrap();
    assert_eq!(review(&path)["status"]["allowed"], true);
    let reviews: serde_json::Value =
        serde_json::from_str(&sim.ok(&["get", "--raw", "/remora-sim/reviews"])).unwrap();
    let kinds: Vec<&str> = reviews
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "TokenReview",
            "SubjectAccessReview",
            "SubjectAccessReview",
            "SubjectAccessReview"
        ]
    );
}

/// kubectl's generator commands go through client-go's typed clients, which POST built-in
/// kinds as protobuf (`application/vnd.kubernetes.protobuf`): the simulator decodes them.
#[test]
fn typed_clients_protobuf_bodies_are_understood() {
    let sim = Sim::start();
    sim.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
        "--from-literal=empty=",
    ]);
    let cm = sim.json(&["get", "configmap", "cfg"]);
    assert_eq!(
        cm["data"],
        serde_json::json!({"greeting": "hello", "empty": ""})
    );
    sim.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cret",
    ]);
    let secret = sim.json(&["get", "secret", "pw"]);
    assert_eq!(secret["data"]["password"], "czNjcmV0");
    assert_eq!(secret["type"], "Opaque");

    sim.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
        "--",
        "sleep",
        "1000",
    ]);
    sim.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    let deploy = sim.json(&["get", "deployment", "web"]);
    assert_eq!(deploy["spec"]["replicas"], 2);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], serde_json::json!(["sleep", "1000"]));
    // go-to-protobuf writes every non-pointer field, also unset ones: their zero values
    // are not taken for meant ones.
    assert!(
        container.get("imagePullPolicy").is_none(),
        "no empty imagePullPolicy: {container}"
    );
    assert_eq!(names(&sim.ok(&["get", "pods", "-o", "name"])).len(), 2);
    // A pointer's zero is meant: zero replicas stay zero (not defaulted to one).
    sim.ok(&[
        "create",
        "deployment",
        "idle",
        "--image=busybox",
        "--replicas=0",
    ]);
    assert_eq!(
        sim.ok(&[
            "get",
            "deployment",
            "idle",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "0"
    );
    assert!(
        sim.ok(&["get", "pods", "-l", "app=idle", "-o", "name"])
            .is_empty()
    );

    // `auth can-i` POSTs a SelfSubjectAccessReview.
    assert_eq!(sim.ok(&["auth", "can-i", "delete", "pods"]).trim(), "yes");
    let reviews: serde_json::Value =
        serde_json::from_str(&sim.ok(&["get", "--raw", "/remora-sim/reviews"])).unwrap();
    let review = reviews
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "SelfSubjectAccessReview")
        .expect("the review is recorded");
    assert_eq!(review["spec"]["resourceAttributes"]["verb"], "delete");
    assert_eq!(review["spec"]["resourceAttributes"]["resource"], "pods");
}

/// kubectl 1.32 asks `/api` and `/apis` for aggregated discovery (`apidiscovery.k8s.io/v2`)
/// first; it gets it, so it needs no per-group-version request, and `api-resources` and
/// `get <custom kind>` work from it.
#[test]
fn kubectl_discovers_through_aggregated_discovery() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.shop.example.com}
spec:
  group: shop.example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
"#,
        &[],
    );
    sim.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/gadgets.shop.example.com",
        "--timeout=30s",
    ]);
    // A fresh discovery cache, so this kubectl discovers everything from the server.
    let cache = sim.dir.path().join("discovery-cache");
    let cache = format!("--cache-dir={}", cache.display());
    let before = discoveries(&sim).len();
    let resources = sim.ok(&[&cache, "api-resources"]);
    let row = |name: &str| {
        resources
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no {name} in:\n{resources}"))
    };
    assert_eq!(row("pods"), ["pods", "po", "v1", "true", "Pod"]);
    assert_eq!(
        row("deployments"),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert_eq!(
        row("gadgets"),
        ["gadgets", "gd", "shop.example.com/v1", "true", "Gadget"]
    );
    assert_eq!(
        row("namespaces"),
        ["namespaces", "ns", "v1", "false", "Namespace"]
    );
    let served: Vec<serde_json::Value> = discoveries(&sim)[before..].to_vec();
    let paths: Vec<(&str, &str)> = served
        .iter()
        .map(|d| (d["path"].as_str().unwrap(), d["served"].as_str().unwrap()))
        .collect();
    assert!(paths.contains(&("/api", "v2")), "{paths:?}");
    assert!(paths.contains(&("/apis", "v2")), "{paths:?}");
    assert!(
        paths.iter().all(|(_, s)| *s == "v2"),
        "no legacy discovery request was needed: {paths:?}"
    );
    sim.apply_yaml(
        "apiVersion: shop.example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {size: XL}\n",
        &[],
    );
    let table = sim.ok(&[&cache, "get", "gadgets"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "AGE"], "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("g1 "), "{table}");
    // Without the aggregated media type in Accept, the legacy documents are served.
    let legacy = sim.ok(&["get", "--raw", "/apis"]);
    assert!(legacy.contains("\"kind\":\"APIGroupList\""), "{legacy}");
}

fn discoveries(sim: &Sim) -> Vec<serde_json::Value> {
    serde_json::from_str(&sim.ok(&["get", "--raw", "/remora-sim/discovery"])).unwrap()
}

/// The managedFields entries of configmap `owned`: (manager, operation, fieldsV1).
fn managed_fields(sim: &Sim) -> Vec<(String, String, serde_json::Value)> {
    let cm = sim.json(&["get", "configmap", "owned", "--show-managed-fields"]);
    cm["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_owned(),
                e["operation"].as_str().unwrap().to_owned(),
                e["fieldsV1"].clone(),
            )
        })
        .collect()
}

/// Server-side apply with field ownership, through the real kubectl with two field
/// managers: managedFields per manager and operation; applying another value of a field
/// someone else owns is a 409 conflict naming the field and its owner, unless
/// `--force-conflicts`, which takes the field over; a field a manager stops applying is
/// removed; a plain patch makes its manager (Update) an owner that apply conflicts with.
#[test]
fn server_side_apply_tracks_field_owners_and_conflicts() {
    use serde_json::json;
    let sim = Sim::start();
    let cm = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: owned}}\ndata: {{{data}}}\n")
    };
    let ssa = |manager: &str, data: &str, extra: &[&str]| {
        let path = sim.dir.path().join(format!("{manager}.yaml"));
        std::fs::write(&path, cm(data)).unwrap();
        let mut args = vec![
            "apply".to_owned(),
            "--server-side".to_owned(),
            format!("--field-manager={manager}"),
            "-f".to_owned(),
            path.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sim.kubectl(&args)
    };
    let data = |sim: &Sim| sim.json(&["get", "configmap", "owned"])["data"].clone();

    assert!(ssa("alice", "shared: one, mine: a", &[]).status.success());
    // bob applies the same value: the field is shared, no conflict.
    assert!(ssa("bob", "shared: one", &[]).status.success());
    let mf = managed_fields(&sim);
    assert_eq!(
        mf,
        [
            (
                "alice".to_owned(),
                "Apply".to_owned(),
                json!({"f:data": {"f:mine": {}, "f:shared": {}}})
            ),
            (
                "bob".to_owned(),
                "Apply".to_owned(),
                json!({"f:data": {"f:shared": {}}})
            ),
        ]
    );

    // bob wants another value: conflict with alice, nothing changes.
    let out = ssa("bob", "shared: two", &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("conflict with \"alice\"") && stderr.contains(".data.shared"),
        "{stderr}"
    );
    assert_eq!(data(&sim), json!({"shared": "one", "mine": "a"}));

    // Forced: bob takes the field over.
    let out = ssa("bob", "shared: two", &["--force-conflicts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(data(&sim), json!({"shared": "two", "mine": "a"}));
    let mf = managed_fields(&sim);
    assert_eq!(mf[0].2, json!({"f:data": {"f:mine": {}}}), "{mf:?}");
    assert_eq!(mf[1].2, json!({"f:data": {"f:shared": {}}}), "{mf:?}");

    // alice stops applying `mine`: it goes (no one else owns it).
    assert!(ssa("alice", "shared: two", &[]).status.success());
    assert_eq!(data(&sim), json!({"shared": "two"}));

    // A merge patch (an Update by kubectl-patch) changes `shared`: it owns it now, and an
    // apply of another value conflicts with it.
    sim.ok(&[
        "patch",
        "configmap",
        "owned",
        "--type=merge",
        "-p",
        r#"{"data":{"shared":"three"}}"#,
    ]);
    let mf = managed_fields(&sim);
    assert!(
        mf.iter().any(|(m, op, f)| m == "kubectl-patch"
            && op == "Update"
            && *f == json!({"f:data": {"f:shared": {}}})),
        "{mf:?}"
    );
    let out = ssa("alice", "shared: two", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("conflict with \"kubectl-patch\""),
        "{stderr}"
    );
}

/// List paging: `kubectl get --chunk-size=2` over 5 pods reads 3 pages (`limit=2` and the
/// continue tokens) and shows all 5; a page's metadata has the token and the remaining
/// count; a token whose snapshot is unknown is 410 Gone.
#[test]
fn kubectl_get_reads_pages_with_limit_and_continue() {
    let sim = Sim::start();
    let pods: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: page-{i}, labels: {{app: paged}}}}\n\
                 spec:\n  containers: [{{name: c, image: busybox, command: [sleep, \"1000\"]}}]\n"
            )
        })
        .collect();
    sim.apply_yaml(&pods.join("---\n"), &[]);
    let out = sim.kubectl(&["get", "pods", "--chunk-size=2", "-v=6"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        listed,
        ["page-0", "page-1", "page-2", "page-3", "page-4"],
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let requests: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("GET ") && l.contains("/pods?") && l.contains("limit=2"))
        .collect();
    assert_eq!(requests.len(), 3, "three pages: {requests:#?}");
    assert_eq!(
        requests.iter().filter(|l| l.contains("continue=")).count(),
        2,
        "{requests:#?}"
    );
    // `-o name` (a plain list, not a Table) pages the same way.
    assert_eq!(
        names(&sim.ok(&["get", "pods", "--chunk-size=2", "-o", "name"])).len(),
        5
    );

    let page: serde_json::Value =
        serde_json::from_str(&sim.ok(&["get", "--raw", "/api/v1/namespaces/default/pods?limit=2"]))
            .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    // The pages are one snapshot: a pod made now is not in the next page.
    sim.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: page-2a}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, \"1000\"]}]\n",
        &[],
    );
    let next: serde_json::Value = serde_json::from_str(&sim.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/pods?limit=2&continue={token}"),
    ]))
    .unwrap();
    let next_names: Vec<&str> = next["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(next_names, ["page-2", "page-3"]);
    assert_eq!(
        next["metadata"]["resourceVersion"],
        page["metadata"]["resourceVersion"]
    );
    // A token nobody issued (or whose snapshot expired) is 410 Gone.
    let stale: String = r#"{"v":"meta.k8s.io/v1","rv":1,"snapshot":"0000","offset":2}"#
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = sim.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/pods?limit=2&continue={stale}"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too old"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The availability controller and discovery of the aggregation layer, as kube-aggregator
/// shows them: an APIService's `Available` condition follows its service (absent, on another
/// port, without endpoints, not answering its discovery over TLS) and a local one is
/// available; `kubectl get apiservices` prints the service and availability columns; `/apis`
/// lists the group of an APIService whether or not it is available.
#[test]
fn apiservice_availability_follows_its_service() {
    let sim = Sim::start();
    sim.apply_yaml(
        r#"
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1alpha1.example.remora.dev}
spec:
  group: example.remora.dev
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  insecureSkipTLSVerify: true
  service: {namespace: default, name: echo, port: 443}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1.local.remora.dev}
spec: {group: local.remora.dev, version: v1, groupPriorityMinimum: 1000, versionPriority: 15}
"#,
        &[],
    );
    let row = |name: &str| {
        sim.ok(&["get", "apiservices", "--no-headers"])
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let wait_row = |name: &str, want: &str| {
        poll(
            || row(name).contains(want),
            &format!("kubectl get apiservices to show {name} {want}"),
        );
    };
    let condition = || {
        let s = sim.json(&["get", "apiservice", "v1alpha1.example.remora.dev"]);
        s["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Available").cloned())
            .unwrap_or_default()
    };
    wait_row("v1.local.remora.dev", "Local True");
    wait_row(
        "v1alpha1.example.remora.dev",
        "default/echo False (ServiceNotFound)",
    );
    assert_eq!(
        condition()["message"],
        "service/echo in \"default\" is not present"
    );
    let header = sim.ok(&["get", "apiservices"]);
    let header = header.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "SERVICE", "AVAILABLE", "AGE"],
        "{header}"
    );
    // Not proxied while not Available.
    let out = sim.kubectl(&["get", "--raw", "/apis/example.remora.dev/v1alpha1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ServiceUnavailable") || err.contains("unable to handle the request"),
        "{err}"
    );
    // Listed in discovery, available or not.
    let apis = sim.ok(&["get", "--raw", "/apis"]);
    assert!(apis.contains("\"example.remora.dev/v1alpha1\""), "{apis}");

    let service = |port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: echo}}\nspec:\n  selector: {{app: \
             echo}}\n  ports: [{{port: {port}, targetPort: 8443}}]\n"
        )
    };
    sim.apply_yaml(&service(80), &[]);
    wait_row("v1alpha1.example.remora.dev", "False (ServicePortError)");
    assert_eq!(
        condition()["message"],
        "service/echo in \"default\" is not listening on port 443"
    );
    let since = condition()["lastTransitionTime"].clone();
    sim.apply_yaml(&service(443), &[]);
    wait_row("v1alpha1.example.remora.dev", "False (MissingEndpoints)");
    assert_eq!(
        condition()["lastTransitionTime"],
        since,
        "still False: the transition time stays"
    );
    // A pod behind it, serving plain HTTP: the discovery check's TLS fails.
    common::web_pod(&sim, "echo", 8443, "0.0.0.0");
    wait_row(
        "v1alpha1.example.remora.dev",
        "False (FailedDiscoveryCheck)",
    );
    let message = condition()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("failing or missing response from https://10.215.")
            && message.contains(":443/apis/example.remora.dev/v1alpha1"),
        "{message}"
    );
    sim.ok(&["delete", "apiservice", "v1alpha1.example.remora.dev"]);
    poll(
        || {
            !sim.ok(&["get", "--raw", "/apis"])
                .contains("example.remora.dev")
        },
        "the deleted APIService's group to leave discovery",
    );
}
