//! Tests for the JSON lines of remora ext and its shell output.

use super::*;

#[test]
fn every_line_carries_the_version_and_its_type() {
    let progress = Line::Progress {
        message: "starting the agent for pid/4".into(),
    }
    .to_json();
    assert_eq!(
        progress,
        json!({"version": 1, "type": "progress", "message": "starting the agent for pid/4"})
    );
    let ready = Line::Ready {
        target: "pid/4".into(),
        env: BTreeMap::from([("A".to_string(), "1".to_string())]),
        unset: vec!["HOME".into()],
        intproxy: "127.0.0.1:9".into(),
        wait_seconds: 120,
    }
    .to_json();
    assert_eq!(
        ready,
        json!({"version": 1, "type": "ready", "target": "pid/4", "env": {"A": "1"},
               "unset": ["HOME"], "intproxy": "127.0.0.1:9", "wait_seconds": 120})
    );
}

#[test]
fn errors_carry_the_message_and_the_help() {
    let line = Line::from_error(&Error::NoTarget).to_json();
    assert_eq!(line["version"], 1);
    assert_eq!(line["type"], "error");
    assert_eq!(line["message"], "no target given");
    assert!(line["help"].as_str().unwrap().contains("--target"));
    let line = Line::from_error(&Error::Io("disk full".into())).to_json();
    assert_eq!(line["help"], Value::Null);
}

#[test]
fn shell_exports_quote_values() {
    let env = BTreeMap::from([("A".to_string(), "it's $HOME".to_string())]);
    assert_eq!(
        shell_exports(&env, &["B".into()]),
        "unset B\nexport A='it'\\''s $HOME'\n"
    );
}
