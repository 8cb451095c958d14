//! Tests for how test commands join the session, and the runner's environment.

use super::*;

fn args(s: &str) -> Vec<String> {
    s.split(' ').map(String::from).collect()
}

#[test]
fn cargo_and_go_test_run_binaries_through_the_runner_others_whole() {
    assert_eq!(mode(&args("cargo test"), false), Mode::Cargo);
    assert_eq!(
        mode(&args("/usr/bin/cargo nextest run"), false),
        Mode::Cargo
    );
    assert_eq!(mode(&args("go test ./..."), false), Mode::Go);
    assert_eq!(mode(&args("go run ."), false), Mode::Whole);
    assert_eq!(mode(&args("pytest -q"), false), Mode::Whole);
    assert_eq!(mode(&args("npm test"), false), Mode::Whole);
    assert_eq!(mode(&args("cargo test"), true), Mode::Whole);
}

#[test]
fn runner_variable_names_follow_cargos_rules() {
    assert_eq!(
        cargo_runner_var("x86_64-unknown-linux-gnu"),
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER"
    );
    assert_eq!(
        cargo_triples(&args("cargo test --target aarch64-unknown-linux-gnu")).unwrap(),
        ["aarch64-unknown-linux-gnu"]
    );
    assert_eq!(
        cargo_triples(&args("cargo test --target=armv7-unknown-linux-gnueabihf")).unwrap(),
        ["armv7-unknown-linux-gnueabihf"]
    );
}

#[test]
fn go_exec_goes_right_after_test() {
    assert_eq!(
        go_command(&args("go test -v ./..."), "/bin/remora runner"),
        ["go", "test", "-exec", "/bin/remora runner", "-v", "./..."]
    );
}

#[test]
fn runner_env_is_cargos_minus_unset_plus_the_session() {
    let own = BTreeMap::from([
        ("CARGO_MANIFEST_DIR".to_string(), "/src".to_string()),
        ("HOME".to_string(), "/root".to_string()),
        (SESSION_FILE_ENV.to_string(), "/run/x.json".to_string()),
    ]);
    let session = json!({"env": {"APP_SECRET": "s", "LD_PRELOAD": "/l.so"}, "unset": ["HOME"]});
    let env = runner_env(own, &session).unwrap();
    assert_eq!(
        env,
        BTreeMap::from([
            ("APP_SECRET".to_string(), "s".to_string()),
            ("CARGO_MANIFEST_DIR".to_string(), "/src".to_string()),
            ("LD_PRELOAD".to_string(), "/l.so".to_string()),
        ])
    );
    assert!(runner_env(BTreeMap::new(), &json!({"env": 3})).is_err());
}
