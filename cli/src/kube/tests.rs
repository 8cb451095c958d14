//! Tests for the launch settings handed to the intproxy.

use super::*;

#[test]
fn the_launch_carries_the_cluster_and_agent_keys_through_the_environment() {
    let mut config = Config {
        kubeconfig: Some("/tmp/kc".into()),
        context: Some("staging".into()),
        namespace: Some("shop".into()),
        ..Config::default()
    };
    config.agent.startup_timeout = 5;
    config.agent.image = "registry.local/agent:dev".into();
    let launch = KubeLaunch::from_config(&config);
    assert_eq!(launch.options.namespace.as_deref(), Some("shop"));
    let back: KubeLaunch = serde_json::from_str(&launch.to_env_value()).unwrap();
    assert_eq!(back, launch);
    assert_eq!(launch.start_timeout(), Duration::from_secs(65));
}

#[test]
fn a_closed_pipe_reader_is_noticed() {
    // Not stdout itself (the test harness owns it): the same check on a pipe.
    use std::os::fd::AsFd;
    let (read, write) = nix::unistd::pipe().unwrap();
    assert!(!reader_gone(write.as_fd()));
    drop(read);
    assert!(reader_gone(write.as_fd()));
}
