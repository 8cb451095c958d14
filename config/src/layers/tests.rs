//! Tests for the environment and flag layers on their own.

use super::*;
use std::collections::BTreeMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn with_env(pairs: &[(&str, &str)]) -> Result<(Config, Vec<(&'static str, Origin)>)> {
    let mut config = Config::default();
    let mut origins = Vec::new();
    apply_env(&mut config, &env_of(pairs), &mut origins)?;
    Ok((config, origins))
}

#[test]
fn every_env_var_sets_its_key() {
    let (config, origins) = with_env(&[
        ("REMORA_TARGET", "pid/1"),
        ("REMORA_NAMESPACE", "staging"),
        ("REMORA_OPERATOR", "op:8443"),
        ("REMORA_FS_MODE", "WRITE"),
        ("REMORA_ENV_INCLUDE", "A_*; B ;;"),
        ("REMORA_ENV_EXCLUDE", "C"),
        ("REMORA_INCOMING_MODE", "steal"),
        ("REMORA_OUTGOING_TCP", "false"),
        ("REMORA_OUTGOING_UDP", "0"),
        ("REMORA_REMOTE_DNS", "FALSE"),
        ("REMORA_REPLY_TIMEOUT", "45"),
    ])
    .unwrap();
    assert_eq!(config.target.as_deref(), Some("pid/1"));
    assert_eq!(config.namespace.as_deref(), Some("staging"));
    assert_eq!(config.operator.as_deref(), Some("op:8443"));
    assert_eq!(config.fs.mode, FsMode::Write);
    assert_eq!(config.env.include, ["A_*", "B"]);
    assert_eq!(config.env.exclude, ["C"]);
    assert_eq!(config.network.incoming.mode, IncomingMode::Steal);
    assert!(!config.network.outgoing.tcp);
    assert!(!config.network.outgoing.udp);
    assert!(!config.network.dns.enabled);
    assert_eq!(config.layer.reply_timeout_secs, Some(45));
    assert_eq!(origins.len(), ENV_VARS.len());
    assert!(origins.contains(&("fs.mode", Origin::Env("REMORA_FS_MODE"))));
}

#[test]
fn empty_env_values_count_as_unset() {
    let (config, origins) =
        with_env(&[("REMORA_TARGET", ""), ("REMORA_OUTGOING_TCP", "")]).unwrap();
    assert_eq!(config, Config::default());
    assert!(origins.is_empty());
}

#[test]
fn bad_env_values_name_the_variable() {
    for (var, value, want) in [
        ("REMORA_FS_MODE", "rw", "expected local, read or write"),
        (
            "REMORA_INCOMING_MODE",
            "on",
            "expected off, mirror or steal",
        ),
        (
            "REMORA_OUTGOING_UDP",
            "yes please",
            "expected true or false",
        ),
    ] {
        let msg = with_env(&[(var, value)]).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("environment variable {var}={value:?}: {want}")),
            "{msg}"
        );
    }
}

#[test]
fn flags_set_their_keys() {
    let mut config = Config::default();
    config.env.overrides.insert("KEEP".into(), "1".into());
    config.env.unset = vec!["OLD".into()];
    let mut origins = Vec::new();
    Overrides {
        target: Some("pod/api".into()),
        namespace: Some("ns".into()),
        operator: Some("op:1".into()),
        kubeconfig: Some("/tmp/kc".into()),
        context: Some("staging".into()),
        fs_mode: Some(FsMode::Local),
        env_include: vec!["APP_*".into()],
        env_exclude: vec!["APP_KEY".into()],
        env_set: vec!["A=1".into(), "B=x=y".into(), "C=".into()],
        env_unset: vec!["D".into()],
        no_outgoing: true,
        no_remote_dns: true,
        incoming_mode: Some(IncomingMode::Mirror),
        ports: vec![80, 443],
        port_mappings: vec!["8080:80".into(), " 8443 : 443 ".into()],
        http_header_filter: None,
        http_path_filter: Some("^/api".into()),
        http_method_filter: None,
        override_filter: true,
        reply_timeout_secs: Some(30),
    }
    .apply(&mut config, &mut origins)
    .unwrap();
    assert_eq!(config.layer.reply_timeout_secs, Some(30));
    assert_eq!(config.target.as_deref(), Some("pod/api"));
    assert_eq!(config.namespace.as_deref(), Some("ns"));
    assert_eq!(config.operator.as_deref(), Some("op:1"));
    assert_eq!(config.kubeconfig, Some("/tmp/kc".into()));
    assert_eq!(config.context.as_deref(), Some("staging"));
    assert!(config.network.incoming.override_filter);
    assert_eq!(config.fs.mode, FsMode::Local);
    assert_eq!(config.env.include, ["APP_*"]);
    assert_eq!(config.env.exclude, ["APP_KEY"]);
    let overrides: Vec<_> = config
        .env
        .overrides
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(overrides, ["A=1", "B=x=y", "C=", "KEEP=1"]);
    assert_eq!(config.env.unset, ["OLD", "D"]);
    assert!(!config.network.outgoing.tcp && !config.network.outgoing.udp);
    assert!(!config.network.dns.enabled);
    assert_eq!(config.network.incoming.mode, IncomingMode::Mirror);
    assert_eq!(config.network.incoming.ports, [80, 443]);
    assert_eq!(
        config.network.incoming.port_mapping,
        [[8080, 80], [8443, 443]]
    );
    assert_eq!(
        config.network.incoming.http_filter,
        Some(HttpFilter::path("^/api"))
    );
    assert!(origins.contains(&("network.outgoing.udp", Origin::Flag("--no-outgoing"))));
}

#[test]
fn several_http_flags_must_all_match_and_replace_the_file_filter() {
    let mut config = Config::default();
    config.network.incoming.http_filter = Some(HttpFilter::header("x-from-file: 1"));
    Overrides {
        http_header_filter: Some("x-user: me".into()),
        http_method_filter: Some("POST".into()),
        ..Overrides::default()
    }
    .apply(&mut config, &mut Vec::new())
    .unwrap();
    assert_eq!(
        config.network.incoming.http_filter,
        Some(HttpFilter::all_of(vec![
            HttpFilter::header("x-user: me"),
            HttpFilter::method("POST")
        ]))
    );
}

#[test]
fn empty_overrides_change_nothing() {
    let mut config = Config::default();
    let mut origins = Vec::new();
    Overrides::default()
        .apply(&mut config, &mut origins)
        .unwrap();
    assert_eq!(config, Config::default());
    assert!(origins.is_empty());
}

#[test]
fn bad_flag_values_name_the_flag() {
    let msg = Overrides {
        env_set: vec!["NOVALUE".into()],
        ..Overrides::default()
    }
    .apply(&mut Config::default(), &mut Vec::new())
    .unwrap_err()
    .to_string();
    assert_eq!(msg, "flag --env \"NOVALUE\": expected KEY=VALUE");
    let msg = Overrides {
        port_mappings: vec!["8080-80".into()],
        ..Overrides::default()
    }
    .apply(&mut Config::default(), &mut Vec::new())
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with("flag --port-mapping \"8080-80\": expected LOCAL:REMOTE"),
        "{msg}"
    );
}

#[test]
fn reply_timeout_comes_from_env_and_zero_is_refused() {
    let mut config = Config::default();
    let mut origins = Vec::new();
    let env = |name: &str| (name == "REMORA_REPLY_TIMEOUT").then(|| "300".to_owned());
    apply_env(&mut config, &env, &mut origins).unwrap();
    assert_eq!(config.layer.reply_timeout_secs, Some(300));
    let zero = |name: &str| (name == "REMORA_REPLY_TIMEOUT").then(|| "0".to_owned());
    let err = apply_env(&mut Config::default(), &zero, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("REMORA_REPLY_TIMEOUT"), "{err}");
    config.layer.reply_timeout_secs = Some(0);
    let err = config.validate().unwrap_err();
    assert!(
        err.to_string().contains("layer.reply_timeout_secs"),
        "{err}"
    );
}
