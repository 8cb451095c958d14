//! Tests for the config types: defaults, the `override` key, and round trips
//! through JSON (the layer's hand-off), TOML and YAML.

use super::*;
use proptest::prelude::*;
use proptest::sample::subsequence;

#[test]
fn defaults_are_documented_values() {
    let config = Config::default();
    assert_eq!(config.fs.mode, FsMode::Read);
    assert_eq!(config.network.incoming.mode, IncomingMode::Off);
    assert!(config.network.outgoing.tcp && config.network.outgoing.udp);
    assert!(!config.network.outgoing.ignore_localhost);
    assert!(config.network.dns.enabled);
}

#[test]
fn override_is_the_file_key_of_overrides() {
    let config: Config = toml::from_str("[env.override]\nA = \"1\"\n").unwrap();
    assert_eq!(config.env.overrides["A"], "1");
    assert!(config.to_env_value().contains("\"override\":{\"A\":\"1\"}"));
    assert!(toml::from_str::<Config>("[env.overrides]\nA = \"1\"\n").is_err());
}

#[test]
fn from_env_value_rejects_garbage_and_invalid_configs() {
    let err = Config::from_env_value("{not json").unwrap_err();
    assert!(matches!(err, Error::Resolved { .. }), "{err:?}");
    assert!(err.to_string().contains("same version"), "{err}");
    let err = Config::from_env_value(r#"{"target": "pode/x"}"#).unwrap_err();
    assert!(
        err.to_string().starts_with("target: unknown target kind"),
        "{err}"
    );
}

#[test]
fn modes_parse_from_strings() {
    assert_eq!("Write".parse::<FsMode>(), Ok(FsMode::Write));
    assert_eq!("STEAL".parse::<IncomingMode>(), Ok(IncomingMode::Steal));
    assert!("rw".parse::<FsMode>().is_err());
    assert!("on".parse::<IncomingMode>().is_err());
}

const ADDRS: &[&str] = &[
    "db:5432",
    "*.svc.cluster.local",
    "10.0.0.0/8",
    "[::1]:80",
    "tcp://api:443",
    "udp://:53",
    "192.168.1.1",
];
const NAMES: &[&str] = &["db", "*.svc.cluster.local", "example.com", "api.internal"];

fn strings(items: Vec<&str>) -> Vec<String> {
    items.into_iter().map(str::to_owned).collect()
}

fn target() -> impl Strategy<Value = Option<String>> {
    let kind = prop_oneof![
        Just("pod"),
        Just("deployment"),
        Just("statefulset"),
        Just("job"),
        Just("rollout")
    ];
    prop_oneof![
        Just(None),
        Just(Some("targetless".to_owned())),
        (1u32..).prop_map(|pid| Some(format!("pid/{pid}"))),
        (
            kind,
            "[a-z]([a-z0-9-]{0,4}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,3}[a-z0-9])?)?",
            proptest::option::of("[a-z]([a-z0-9-]{0,5}[a-z0-9])?")
        )
            .prop_map(|(kind, name, container)| Some(match container {
                Some(c) => format!("{kind}/{name}/container/{c}"),
                None => format!("{kind}/{name}"),
            })),
    ]
}

fn http_filter() -> impl Strategy<Value = HttpFilter> {
    let leaf = prop_oneof![
        "[a-z-]{1,8}: [a-z]{0,5}".prop_map(HttpFilter::header),
        "\\^?/[a-z]{0,6}".prop_map(HttpFilter::path),
        prop_oneof![Just("GET"), Just("POST"), Just("delete")].prop_map(HttpFilter::method),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(HttpFilter::all_of),
            prop::collection::vec(inner, 1..3).prop_map(HttpFilter::any_of),
        ]
    })
}

fn config() -> impl Strategy<Value = Config> {
    let globs = || prop::collection::vec("[A-Z_]{1,6}\\*?", 0..3);
    let regexes = || prop::collection::vec("\\^?/[a-z]{0,6}(/|\\$)?", 0..3);
    let env = (
        globs(),
        globs(),
        prop::collection::btree_map("[A-Z][A-Z0-9_]{0,6}", "[ -~]{0,10}", 0..3),
        globs(),
    )
        .prop_map(|(include, exclude, overrides, unset)| EnvConfig {
            include,
            exclude,
            overrides,
            unset,
        });
    let fs_mode = prop_oneof![Just(FsMode::Local), Just(FsMode::Read), Just(FsMode::Write)];
    let fs = (fs_mode, regexes(), regexes(), regexes(), regexes()).prop_map(
        |(mode, read_only, read_write, local, not_found)| FsConfig {
            mode,
            read_only,
            read_write,
            local,
            not_found,
        },
    );
    let incoming_mode = prop_oneof![
        Just(IncomingMode::Off),
        Just(IncomingMode::Mirror),
        Just(IncomingMode::Steal)
    ];
    let incoming = (
        incoming_mode,
        prop::collection::vec(1u16.., 0..3),
        prop::collection::btree_set(1u16.., 0..3),
        prop::collection::btree_set(1u16.., 0..3),
        proptest::option::of(http_filter()),
    )
        .prop_map(
            |(mode, ports, locals, remotes, http_filter)| IncomingConfig {
                mode,
                ports,
                port_mapping: locals
                    .into_iter()
                    .zip(remotes)
                    .map(|(l, r)| [l, r])
                    .collect(),
                http_filter,
                override_filter: false,
            },
        );
    let outgoing = (any::<[bool; 4]>(), subsequence(ADDRS, 0..4)).prop_map(|(b, entries)| {
        let entries = strings(entries);
        let filter = if b[3] {
            OutgoingFilter {
                remote: entries,
                local: vec![],
            }
        } else {
            OutgoingFilter {
                remote: vec![],
                local: entries,
            }
        };
        OutgoingConfig {
            tcp: b[0],
            udp: b[1],
            ignore_localhost: b[2],
            filter,
        }
    });
    let dns = (any::<[bool; 2]>(), subsequence(NAMES, 0..3)).prop_map(|(b, names)| {
        let names = strings(names);
        let filter = if b[1] {
            DnsFilter {
                remote: names,
                local: vec![],
            }
        } else {
            DnsFilter {
                remote: vec![],
                local: names,
            }
        };
        DnsConfig {
            enabled: b[0],
            filter,
        }
    });
    let operator = proptest::option::of(
        ("[a-z]{1,8}(\\.[a-z]{1,5})?", 1u16..).prop_map(|(h, p)| format!("{h}:{p}")),
    );
    (
        target(),
        proptest::option::of("[a-z][a-z0-9]{0,10}"),
        operator,
        env,
        fs,
        (incoming, outgoing, dns),
    )
        .prop_map(
            |(target, namespace, operator, env, fs, (incoming, outgoing, dns))| Config {
                target,
                namespace,
                operator,
                env,
                fs,
                network: NetworkConfig {
                    incoming,
                    outgoing,
                    dns,
                },
                interception: None,
                layer: LayerConfig::default(),
                db_branches: Vec::new(),
                split_queues: Default::default(),
                kubeconfig: None,
                context: None,
                agent: crate::AgentSettings::default(),
            },
        )
}

proptest! {
    #[test]
    fn valid_configs_round_trip_through_the_env_value(config in config()) {
        config.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let value = config.to_env_value();
        prop_assert_eq!(&Config::from_env_value(&value).unwrap(), &config);
    }

    #[test]
    fn configs_round_trip_through_toml_and_yaml(config in config()) {
        let text = toml::to_string(&config).unwrap();
        prop_assert_eq!(&toml::from_str::<Config>(&text).unwrap(), &config, "{}", text);
        let text = serde_yaml_ng::to_string(&config).unwrap();
        prop_assert_eq!(&serde_yaml_ng::from_str::<Config>(&text).unwrap(), &config, "{}", text);
    }

    #[test]
    fn any_strings_round_trip_through_json(
        target in proptest::option::of(any::<String>()),
        local in prop::collection::vec(any::<String>(), 0..3),
        overrides in prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
    ) {
        let mut config = Config { target, ..Config::default() };
        config.fs.local = local;
        config.env.overrides = overrides;
        let json = serde_json::to_string(&config).unwrap();
        prop_assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);
    }
}
