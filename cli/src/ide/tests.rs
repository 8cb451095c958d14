//! Tests for the IntelliJ run configurations (parsed as XML).

use super::*;
use std::path::Path;

fn args(jdwp: Option<u16>) -> IntellijArgs {
    IntellijArgs {
        target: "pid/42".into(),
        config: Some("remora.toml".into()),
        name: "api & co".into(),
        dir: "/proj".into(),
        jdwp_port: jdwp,
        command: vec!["./gradlew".into(), "run".into(), "--args=it's".into()],
    }
}

fn option<'a>(config: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    config
        .children()
        .find(|n| n.has_tag_name("option") && n.attribute("name") == Some(name))
        .and_then(|n| n.attribute("value"))
}

#[test]
fn shell_configuration_runs_the_command_through_remora_run() {
    let files = intellij(&args(None));
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, Path::new("/proj/.run/api _ co.run.xml"));
    let doc = roxmltree::Document::parse(&files[0].1).unwrap();
    let root = doc.root_element();
    assert_eq!(
        root.attribute("name"),
        Some("ProjectRunConfigurationManager")
    );
    let config = root.first_element_child().unwrap();
    assert_eq!(config.attribute("type"), Some("ShConfigurationType"));
    assert_eq!(config.attribute("name"), Some("api & co"));
    assert_eq!(
        option(config, "SCRIPT_TEXT"),
        Some(
            "remora run --target 'pid/42' -f 'remora.toml' -- './gradlew' 'run' '--args=it'\\''s'"
        )
    );
    assert_eq!(option(config, "EXECUTE_SCRIPT_FILE"), Some("false"));
    assert_eq!(
        option(config, "SCRIPT_WORKING_DIRECTORY"),
        Some("$PROJECT_DIR$")
    );
}

#[test]
fn jdwp_port_adds_the_agent_and_a_remote_debug_configuration() {
    let files = intellij(&args(Some(5005)));
    assert_eq!(files.len(), 2);
    let doc = roxmltree::Document::parse(&files[0].1).unwrap();
    let script = option(
        doc.root_element().first_element_child().unwrap(),
        "SCRIPT_TEXT",
    )
    .unwrap();
    assert!(
        script.contains(
            "--env 'JAVA_TOOL_OPTIONS=-agentlib:jdwp=transport=dt_socket,server=y,suspend=n,address=127.0.0.1:5005'"
        ),
        "{script}"
    );
    let doc = roxmltree::Document::parse(&files[1].1).unwrap();
    let config = doc.root_element().first_element_child().unwrap();
    assert_eq!(config.attribute("type"), Some("Remote"));
    assert_eq!(
        config.attribute("name"),
        Some("api & co (attach JVM debugger)")
    );
    assert_eq!(option(config, "HOST"), Some("127.0.0.1"));
    assert_eq!(option(config, "PORT"), Some("5005"));
    assert_eq!(option(config, "SERVER_MODE"), Some("false"));
}
