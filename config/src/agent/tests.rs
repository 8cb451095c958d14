//! Tests for the `agent.*` keys: defaults, a full table, validation.

use crate::{AgentMode, AgentSettings, Config};

fn load(toml: &str) -> Config {
    toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn defaults_start_a_job_and_stay_out_of_the_resolved_config() {
    let config = Config::default();
    assert_eq!(config.agent.mode(), AgentMode::Job);
    assert_eq!(config.agent.startup_timeout, 60);
    assert!(config.agent.tolerations.is_none());
    let json = config.to_env_value();
    assert!(!json.contains("agent"), "{json}");
}

#[test]
fn a_full_agent_table_loads() {
    let config = load(
        r#"
        target = "deployment/api"
        kubeconfig = "/tmp/kc"
        context = "staging"
        [agent]
        image = "registry.local/remora-agent:dev"
        namespace = "remora"
        ttl = 5
        startup_timeout = 120
        privileged = true
        ephemeral = true
        idle_timeout = 10
        service_account = "remora-agent"
        labels = { team = "shop" }
        annotations = { "sidecar.istio.io/inject" = "false" }
        node_selector = { "kubernetes.io/os" = "linux" }
        resources = { requests = { cpu = "100m" }, limits = { memory = "128Mi" } }
        [[agent.tolerations]]
        key = "dedicated"
        operator = "Equal"
        value = "staging"
        effect = "NoExecute"
        tolerationSeconds = 60
        "#,
    );
    config.validate().unwrap();
    let agent = &config.agent;
    assert_eq!(agent.mode(), AgentMode::Ephemeral);
    assert_eq!(agent.image, "registry.local/remora-agent:dev");
    assert_eq!(agent.resources.limits["memory"], "128Mi");
    let tolerations = agent.tolerations.as_ref().unwrap();
    assert_eq!(tolerations[0].toleration_seconds, Some(60));
    assert_eq!(config.context.as_deref(), Some("staging"));
    // The resolved config round-trips, agent table included.
    let back: Config = serde_json::from_str(&config.to_env_value()).unwrap();
    assert_eq!(back, config);
}

#[test]
fn unknown_agent_keys_and_bad_values_are_errors_naming_the_key() {
    assert!(toml::from_str::<Config>("[agent]\nimagee = \"x\"").is_err());
    let config = load(
        r#"
        [agent]
        image = ""
        startup_timeout = 0
        namespace = "Bad_NS"
        [[agent.tolerations]]
        operator = "Maybe"
        "#,
    );
    let err = config.validate().unwrap_err().to_string();
    for key in [
        "agent.image",
        "agent.startup_timeout",
        "agent.namespace",
        "agent.tolerations[0].operator",
    ] {
        assert!(err.contains(key), "{key} missing in: {err}");
    }
    assert_eq!(
        AgentSettings::default().image,
        crate::DEFAULT_AGENT_IMAGE,
        "the documented default"
    );
}
