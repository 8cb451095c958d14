use super::*;
use serde_json::json;

fn agent_pod(state: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "remora-agent-abc-x1"},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "agent", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": state}]}
    }))
    .unwrap()
}

#[test]
fn an_image_pull_error_names_the_image() {
    let pod = agent_pod(
        json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}}),
    );
    let err = agent_failed(&pod, "agent", "registry.example/agent:1").unwrap();
    assert!(
        err.contains("cannot pull the agent image registry.example/agent:1: ImagePullBackOff"),
        "{err}"
    );
    assert!(!agent_running(&pod, "agent"));
    let wait = describe_wait(Some(&pod), "registry.example/agent:1");
    assert_eq!(
        wait,
        "pod remora-agent-abc-x1 to pull image registry.example/agent:1 (Pending: ImagePullBackOff)"
    );
}

#[test]
fn an_exited_agent_and_a_running_one_are_told_apart() {
    let pod =
        agent_pod(json!({"terminated": {"exitCode": 1, "message": "no process of container x"}}));
    assert_eq!(
        agent_failed(&pod, "agent", "i").unwrap(),
        "the agent exited with code 1: no process of container x"
    );
    let pod = agent_pod(json!({"waiting": {"reason": "RunContainerError",
        "message": "exec: \"remora-agent\": not found"}}));
    assert_eq!(
        agent_failed(&pod, "agent", "i").unwrap(),
        "the agent container of image i cannot start: RunContainerError: exec: \"remora-agent\": not found"
    );
    let pod = agent_pod(json!({"running": {}}));
    assert!(agent_running(&pod, "agent"));
    assert_eq!(agent_failed(&pod, "agent", "i"), None);
    let pod = agent_pod(json!({"waiting": {"reason": "ContainerCreating"}}));
    assert_eq!(agent_failed(&pod, "agent", "i"), None);
    assert_eq!(
        describe_wait(Some(&pod), "i"),
        "pod remora-agent-abc-x1 to run (Pending: ContainerCreating)"
    );
}

#[test]
fn resolve_canonicalises_without_a_cluster() {
    let platform = KubePlatform {
        options: ClientOptions::default(),
        settings: AgentSettings::default(),
    };
    assert_eq!(
        platform.resolve("deploy/api/container/app").unwrap().name,
        "deployment/api/container/app"
    );
    let err = platform.resolve("pid/42").unwrap_err().to_string();
    assert!(err.contains("unknown kind `pid`"), "{err}");
}

#[test]
fn phases_tell_scheduling_from_pulling_and_read_well() {
    let unscheduled: Pod = serde_json::from_value(json!({
        "metadata": {"name": "remora-agent-abc-x1"},
        "spec": {"containers": [{"name": "agent"}]},
        "status": {"phase": "Pending"}
    }))
    .unwrap();
    assert_eq!(
        phase_of(&unscheduled, "agent", "img:1").to_string(),
        "waiting for pod remora-agent-abc-x1 to be scheduled"
    );
    let creating = agent_pod(json!({"waiting": {"reason": "ContainerCreating"}}));
    assert_eq!(
        phase_of(&creating, "agent", "img:1").to_string(),
        "pulling the image img:1 and starting pod remora-agent-abc-x1"
    );
    assert_eq!(
        Phase::CreatingJob {
            name: "remora-agent-r1".into(),
            namespace: "shop".into()
        }
        .to_string(),
        "creating the agent job remora-agent-r1 in namespace shop"
    );
}

#[tokio::test]
async fn a_cancelled_wait_says_remora_was_interrupted() {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = pause(&cancel, &mut 0).await.unwrap_err().to_string();
    assert!(err.contains("interrupted"), "{err}");
}

#[test]
fn polling_starts_fast_and_settles_at_the_poll_interval() {
    let delays: Vec<u128> = (0..7).map(|a| poll_delay(a).as_millis()).collect();
    assert_eq!(delays, [25, 50, 100, 200, 400, 500, 500]);
    assert_eq!(poll_delay(u32::MAX), POLL);
}
