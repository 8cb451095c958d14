//! Tests for loading: file location, formats, precedence, and error reporting.

use super::*;
use crate::{FsMode, IncomingMode};
use std::collections::BTreeMap;
use std::error::Error as _;

const TOML: &str = r#"
target = "pod/from-file"

[fs]
mode = "write"

[env]
exclude = ["FILE_*"]

[network.incoming]
mode = "mirror"

[network.outgoing]
tcp = false

[network.dns]
enabled = false
"#;

const JSON: &str = r#"{
  "target": "pod/from-file",
  "fs": { "mode": "write" },
  "env": { "exclude": ["FILE_*"] },
  "network": {
    "incoming": { "mode": "mirror" },
    "outgoing": { "tcp": false },
    "dns": { "enabled": false }
  }
}"#;

const YAML: &str = r#"
target: pod/from-file
fs:
  mode: write
env:
  exclude: ["FILE_*"]
network:
  incoming:
    mode: mirror
  outgoing:
    tcp: false
  dns:
    enabled: false
"#;

const FORMATS: [(&str, &str); 4] = [
    ("toml", TOML),
    ("json", JSON),
    ("yaml", YAML),
    ("yml", YAML),
];

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn load(
    dir: &Path,
    file: Option<&str>,
    env: &[(&str, &str)],
    overrides: Overrides,
) -> Result<Loaded> {
    Config::load(LoadOptions {
        file: file.map(PathBuf::from),
        cwd: Some(dir.to_owned()),
        env: &env_of(env),
        overrides,
    })
}

/// The whole error chain on one line, as the CLI prints it.
fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

struct Case {
    key: &'static str,
    env: (&'static str, &'static str),
    flag: fn(&mut Overrides),
    get: fn(&Config) -> String,
    default: &'static str,
    file: &'static str,
    from_env: &'static str,
    from_flag: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            key: "target",
            env: ("REMORA_TARGET", "pod/from-env"),
            flag: |o| o.target = Some("pod/from-flag".into()),
            get: |c| format!("{:?}", c.target),
            default: "None",
            file: "Some(\"pod/from-file\")",
            from_env: "Some(\"pod/from-env\")",
            from_flag: "Some(\"pod/from-flag\")",
        },
        Case {
            key: "fs.mode",
            env: ("REMORA_FS_MODE", "local"),
            flag: |o| o.fs_mode = Some(FsMode::Read),
            get: |c| format!("{:?}", c.fs.mode),
            default: "Read",
            file: "Write",
            from_env: "Local",
            from_flag: "Read",
        },
        Case {
            key: "env.exclude",
            env: ("REMORA_ENV_EXCLUDE", "ENV_*;ENV2"),
            flag: |o| o.env_exclude = vec!["FLAG_*".into()],
            get: |c| format!("{:?}", c.env.exclude),
            default: "[]",
            file: "[\"FILE_*\"]",
            from_env: "[\"ENV_*\", \"ENV2\"]",
            from_flag: "[\"FLAG_*\"]",
        },
        Case {
            key: "network.outgoing.tcp",
            env: ("REMORA_OUTGOING_TCP", "true"),
            flag: |o| o.no_outgoing = true,
            get: |c| c.network.outgoing.tcp.to_string(),
            default: "true",
            file: "false",
            from_env: "true",
            from_flag: "false",
        },
        Case {
            key: "network.dns.enabled",
            env: ("REMORA_REMOTE_DNS", "true"),
            flag: |o| o.no_remote_dns = true,
            get: |c| c.network.dns.enabled.to_string(),
            default: "true",
            file: "false",
            from_env: "true",
            from_flag: "false",
        },
        Case {
            key: "network.incoming.mode",
            env: ("REMORA_INCOMING_MODE", "steal"),
            flag: |o| o.incoming_mode = Some(IncomingMode::Off),
            get: |c| format!("{:?}", c.network.incoming.mode),
            default: "Off",
            file: "Mirror",
            from_env: "Steal",
            from_flag: "Off",
        },
    ]
}

#[test]
fn precedence_is_default_file_env_flag_in_every_format() {
    for (ext, content) in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("remora.{ext}");
        std::fs::write(dir.path().join(&name), content).unwrap();
        let file = Some(name.as_str());
        for case in cases() {
            let ctx = format!("{ext} {}", case.key);
            let flags = || {
                let mut o = Overrides::default();
                (case.flag)(&mut o);
                o
            };
            let get =
                |l: Result<Loaded>| (case.get)(&l.unwrap_or_else(|e| panic!("{ctx}: {e}")).config);
            let env = [case.env];
            let d = dir.path();
            assert_eq!(
                get(load(d, None, &[], Overrides::default())),
                case.default,
                "{ctx}"
            );
            assert_eq!(
                get(load(d, file, &[], Overrides::default())),
                case.file,
                "{ctx}"
            );
            assert_eq!(
                get(load(d, file, &env, Overrides::default())),
                case.from_env,
                "{ctx}"
            );
            assert_eq!(get(load(d, file, &env, flags())), case.from_flag, "{ctx}");
            assert_eq!(get(load(d, file, &[], flags())), case.from_flag, "{ctx}");
            assert_eq!(
                get(load(d, None, &env, Overrides::default())),
                case.from_env,
                "{ctx}"
            );
        }
    }
}

#[test]
fn the_three_formats_load_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let configs: Vec<Config> = FORMATS
        .iter()
        .map(|(ext, content)| {
            let path = dir.path().join(format!("c.{ext}"));
            std::fs::write(&path, content).unwrap();
            Config::from_file(&path).unwrap()
        })
        .collect();
    assert!(configs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(configs[0].target.as_deref(), Some("pod/from-file"));
}

#[test]
fn file_is_located_explicit_then_env_then_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join(".remora")).unwrap();
    std::fs::write(d.join(".remora/config.toml"), "target = \"pod/default\"").unwrap();
    std::fs::write(d.join("env.json"), r#"{"target": "pod/env"}"#).unwrap();
    std::fs::write(d.join("explicit.yaml"), "target: pod/explicit").unwrap();
    let env = [(CONFIG_FILE_ENV, "env.json")];

    let loaded = load(d, Some("explicit.yaml"), &env, Overrides::default()).unwrap();
    assert_eq!(loaded.file, Some(d.join("explicit.yaml")));
    assert_eq!(loaded.config.target.as_deref(), Some("pod/explicit"));

    let loaded = load(d, None, &env, Overrides::default()).unwrap();
    assert_eq!(loaded.file, Some(d.join("env.json")));
    assert_eq!(loaded.config.target.as_deref(), Some("pod/env"));

    let loaded = load(d, None, &[], Overrides::default()).unwrap();
    assert_eq!(loaded.file, Some(d.join(".remora/config.toml")));
    assert_eq!(loaded.config.target.as_deref(), Some("pod/default"));

    let empty = tempfile::tempdir().unwrap();
    let loaded = load(empty.path(), None, &[], Overrides::default()).unwrap();
    assert_eq!(loaded.file, None);
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn a_named_file_that_is_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (file, env) in [
        (Some("nope.toml"), vec![]),
        (None, vec![(CONFIG_FILE_ENV, "nope.toml")]),
    ] {
        let err = load(dir.path(), file, &env, Overrides::default()).unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err:?}");
        let text = chain(&err);
        assert!(
            text.contains("reading config file") && text.contains("nope.toml"),
            "{text}"
        );
    }
}

#[test]
fn unsupported_extension_names_path_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("remora.ini"), "").unwrap();
    let text = chain(&load(dir.path(), Some("remora.ini"), &[], Overrides::default()).unwrap_err());
    assert!(text.contains("remora.ini"), "{text}");
    assert!(text.contains(".toml, .json, .yaml or .yml"), "{text}");
}

#[test]
fn unknown_keys_surface_with_the_file_path() {
    let dir = tempfile::tempdir().unwrap();
    for (ext, content) in [
        ("toml", "[fs]\nmodez = \"read\"\n"),
        ("json", r#"{"fs": {"modez": "read"}}"#),
        ("yaml", "fs:\n  modez: read\n"),
    ] {
        let name = format!("bad.{ext}");
        std::fs::write(dir.path().join(&name), content).unwrap();
        let err = load(dir.path(), Some(&name), &[], Overrides::default()).unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains(&format!(
                "parsing config file {}",
                dir.path().join(&name).display()
            )),
            "{text}"
        );
        assert!(text.contains("unknown field `modez`"), "{text}");
        assert!(text.contains("expected one of"), "{text}");
    }
}

#[test]
fn wrong_types_and_syntax_errors_surface_with_the_file_path() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content, want) in [
        (
            "a.toml",
            "[network.outgoing]\ntcp = \"yes\"\n",
            "invalid type",
        ),
        (
            "b.json",
            "{\"fs\": {\"mode\": \"rw\"}}",
            "unknown variant `rw`",
        ),
        ("c.yaml", "network: [1, 2", "c.yaml"),
        ("d.toml", "target = ", "d.toml"),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
        let err = load(dir.path(), Some(name), &[], Overrides::default()).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{name}: {err:?}");
        let text = chain(&err);
        assert!(text.contains(name) && text.contains(want), "{name}: {text}");
    }
}

#[test]
fn empty_files_are_default_configs() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("a.toml", ""),
        ("b.yaml", "# nothing yet\n---\n"),
        ("c.json", "{}"),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
        let loaded = load(dir.path(), Some(name), &[], Overrides::default()).unwrap();
        assert_eq!(loaded.config, Config::default(), "{name}");
    }
}

#[test]
fn validation_errors_say_which_layer_set_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.toml"),
        "target = \"pod/ok\"\n[fs]\nlocal = [\"(\"]\n",
    )
    .unwrap();
    let flags = Overrides {
        ports: vec![0],
        ..Overrides::default()
    };
    let err = load(
        dir.path(),
        Some("r.toml"),
        &[("REMORA_TARGET", "pode/x")],
        flags,
    )
    .unwrap_err();
    let Error::Invalid(issues) = &err else {
        panic!("{err:?}")
    };
    let text = err.to_string();
    assert_eq!(issues.0.len(), 3, "{text}");
    assert!(
        text.contains("target: unknown target kind \"pode\""),
        "{text}"
    );
    assert!(
        text.contains("[set by environment variable REMORA_TARGET]"),
        "{text}"
    );
    let file = dir.path().join("r.toml");
    assert!(text.contains(&format!("fs.local[0]: invalid regex \"(\": unclosed group (see https://docs.rs/regex/#syntax) [set by config file {}]", file.display())), "{text}");
    assert!(
        text.contains(
            "network.incoming.ports[0]: port 0 is not valid (use 1-65535) [set by flag --port]"
        ),
        "{text}"
    );
}

#[test]
fn loaded_reports_origins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), "target = \"pod/a\"").unwrap();
    let flags = Overrides {
        fs_mode: Some(FsMode::Local),
        ..Overrides::default()
    };
    let loaded = load(
        dir.path(),
        Some("r.toml"),
        &[("REMORA_FS_MODE", "write")],
        flags,
    )
    .unwrap();
    assert_eq!(loaded.origin_of("fs.mode"), Some(Origin::Flag("--fs-mode")));
    assert_eq!(
        loaded.origin_of("target"),
        Some(Origin::File(dir.path().join("r.toml")))
    );
    assert_eq!(
        loaded.origins[0],
        ("fs.mode", Origin::Env("REMORA_FS_MODE"))
    );
    assert!(
        !format!(
            "{:?}",
            LoadOptions {
                file: None,
                cwd: None,
                env: &|_| None,
                overrides: Overrides::default()
            }
        )
        .is_empty()
    );
}

#[test]
fn format_is_chosen_by_extension_in_any_case() {
    assert_eq!(Format::of(Path::new("a.TOML")).unwrap(), Format::Toml);
    assert_eq!(Format::of(Path::new("a.Yml")).unwrap(), Format::Yaml);
    assert_eq!(Format::of(Path::new("a.json")).unwrap(), Format::Json);
    assert!(Format::of(Path::new("config")).is_err());
}
