//! The operator's Kubernetes mode end to end on the test cluster: the real
//! `remora-operator serve --platform kubernetes` starts the agent of
//! `deployment/web` as a Job through the Kubernetes platform (the sim runs
//! its `remora-agent` command from target/debug) and reaches it through
//! `pods/portforward`; `remora run --operator` with a service-account token
//! gets the pod's environment; the session shows as a RemoraSession with the
//! reviewed identity while it runs; after the last session the object and
//! the agent Job are gone. (`kubectl delete remorasession` ending a session
//! is tested in `operator-kube/tests/sim_sessions.rs`.)
//!
//! Needs root and the workspace binaries `remora`, `remora-operator`,
//! `remora-agent`, `libremora_layer.so` and `remora-kube-sim`.

use remora_tests::{bin_path, require_sandbox};
use std::path::Path;
use std::process::{Command, Stdio};

#[path = "support/kube_sim.rs"]
mod kube_sim;

use kube_sim::*;

fn sessions(sim: &Sim) -> serde_json::Value {
    let json = sim.kubectl(&["get", "remorasessions", "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&json).unwrap()["items"].clone()
}

#[test]
fn operator_sessions_on_a_deployment_run_through_its_agent_job_and_show_as_objects() {
    require_sandbox!();
    let sim = Sim::start(true);
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator-kube/deploy/crds.yaml");
    sim.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    sim.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/remorasessions.remora.dev",
        "crd/remorapolicies.remora.dev",
        "crd/remoraclusterpolicies.remora.dev",
        "crd/remoraqueuesplits.remora.dev",
    ]);
    sim.deployment("web", "exec sleep 300");
    wait_ready(&sim, "web");

    let (_operator, addr) = start_operator(&sim);

    // A session that waits until told to end (a file appears).
    let go = sim.dir.path().join("go");
    let script = format!(
        "echo GREETING=$GREETING; while [ ! -e {} ]; do sleep 0.1; done; echo done",
        go.display()
    );
    let mut run = Command::new(bin_path("remora").unwrap())
        .args(["run", "--operator", &addr, "-t", "deployment/web", "--"])
        .args(["sh", "-c", &script])
        .env("REMORA_OPERATOR_TOKEN", "remora-sim-sa:default:alice")
        .env("REMORA_USER", "alice")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let run_out = lines(run.stdout.take().unwrap());
    let run_guard = Reaped(run);
    assert_eq!(
        next_line(&run_out, "the command's environment"),
        "GREETING=hello-from-the-pod"
    );
    assert!(!sim.agent_objects().trim().is_empty(), "the agent Job runs");
    poll(
        || sessions(&sim).as_array().is_some_and(|a| a.len() == 1),
        "alice's RemoraSession",
    );
    let session = sessions(&sim)[0].clone();
    assert_eq!(session["spec"]["user"], "alice", "{session}");
    assert_eq!(
        session["spec"]["identity"], "system:serviceaccount:default:alice",
        "{session}"
    );
    assert_eq!(session["spec"]["target"], "deployment/web", "{session}");

    // The command ends: the session, its object and (after the last
    // session) the agent Job go.
    std::fs::write(&go, "").unwrap();
    assert_eq!(next_line(&run_out, "the command's end"), "done");
    let mut run = run_guard;
    let status = run.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    poll(
        || sessions(&sim).as_array().is_some_and(Vec::is_empty),
        "the RemoraSession to be deleted",
    );
    poll(
        || sim.agent_objects().trim().is_empty(),
        "the agent Job to be deleted after the last session",
    );
}
