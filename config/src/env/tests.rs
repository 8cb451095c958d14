//! Tests for environment selection.

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn remote() -> BTreeMap<String, String> {
    map(&[
        ("PATH", "/pod/bin"),
        ("HOME", "/root"),
        ("HOSTNAME", "api-7f9c"),
        ("LD_PRELOAD", "/pod/lib.so"),
        ("SSH_AUTH_SOCK", "/pod/ssh"),
        ("LC_ALL", "C"),
        ("REMORA_TARGET", "pod/x"),
        ("DATABASE_URL", "postgres://db/app"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
        ("SHARED", "remote"),
    ])
}

fn local() -> BTreeMap<String, String> {
    map(&[
        ("PATH", "/usr/bin"),
        ("HOME", "/home/dev"),
        ("SHARED", "local"),
        ("EDITOR", "vi"),
    ])
}

#[test]
fn never_imported_variables_stay_local_but_hostname_is_imported() {
    let p = EnvPolicy::new(&EnvConfig::default()).unwrap();
    let out = p.select(&remote(), &local());
    assert_eq!(out["PATH"], "/usr/bin");
    assert_eq!(out["HOME"], "/home/dev");
    assert_eq!(out["HOSTNAME"], "api-7f9c");
    assert_eq!(out["SHARED"], "remote");
    assert_eq!(out["EDITOR"], "vi");
    assert_eq!(out["DATABASE_URL"], "postgres://db/app");
    for name in ["LD_PRELOAD", "SSH_AUTH_SOCK", "LC_ALL", "REMORA_TARGET"] {
        assert!(!out.contains_key(name), "{name} imported");
    }
    for name in [
        "PATH",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "XDG_RUNTIME_DIR",
        "_",
    ] {
        assert!(!p.imports(name), "{name}");
    }
    assert!(p.imports("HOSTNAME"));
    assert!(p.imports("RUST_LOG"));
}

#[test]
fn include_selects_only_matching_names() {
    let p = EnvPolicy::new(&EnvConfig {
        include: strings(&["AWS_*", "DATABASE_UR?", "PATH"]),
        ..EnvConfig::default()
    })
    .unwrap();
    let out = p.select(&remote(), &local());
    assert_eq!(out["AWS_REGION"], "eu-west-1");
    assert_eq!(out["DATABASE_URL"], "postgres://db/app");
    assert_eq!(out["SHARED"], "local");
    assert_eq!(out["PATH"], "/usr/bin", "never-imported beats include");
    assert!(!out.contains_key("HOSTNAME"));
}

#[test]
fn exclude_beats_include() {
    let p = EnvPolicy::new(&EnvConfig {
        include: strings(&["AWS_*"]),
        exclude: strings(&["*SECRET*"]),
        ..EnvConfig::default()
    })
    .unwrap();
    let out = p.select(&remote(), &local());
    assert_eq!(out["AWS_REGION"], "eu-west-1");
    assert!(!out.contains_key("AWS_SECRET_ACCESS_KEY"));
}

#[test]
fn override_sets_and_unset_removes_last() {
    let p = EnvPolicy::new(&EnvConfig {
        overrides: map(&[
            ("DATABASE_URL", "postgres://localhost/app"),
            ("PATH", "/custom"),
        ]),
        unset: strings(&["AWS_*", "EDITOR"]),
        ..EnvConfig::default()
    })
    .unwrap();
    let out = p.select(&remote(), &local());
    assert_eq!(out["DATABASE_URL"], "postgres://localhost/app");
    assert_eq!(
        out["PATH"], "/custom",
        "override can set a never-imported variable"
    );
    assert!(!out.contains_key("AWS_REGION"));
    assert!(
        !out.contains_key("EDITOR"),
        "unset removes local variables too"
    );
}

#[test]
fn raw_patterns_are_kept_for_the_agent() {
    let p = EnvPolicy::new(&EnvConfig {
        include: strings(&["APP_*"]),
        exclude: strings(&["APP_SECRET"]),
        ..EnvConfig::default()
    })
    .unwrap();
    assert_eq!(p.include_patterns(), ["APP_*"]);
    assert_eq!(p.exclude_patterns(), ["APP_SECRET"]);
    let agent = p.agent_exclude_patterns();
    assert_eq!(agent[0], "APP_SECRET");
    assert!(agent.iter().any(|g| g == "LD_*"));
}

#[test]
fn invalid_globs_and_names_are_reported() {
    let err = EnvPolicy::new(&EnvConfig {
        exclude: strings(&["OK", "[A-"]),
        overrides: map(&[("A=B", "x")]),
        ..EnvConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("env.exclude[1]: invalid glob \"[A-\""),
        "{err}"
    );
    assert!(
        err.contains("env.override.\"A=B\": a variable name cannot"),
        "{err}"
    );
}

#[test]
fn never_imported_list_compiles() {
    for glob in NEVER_IMPORTED {
        Glob::new(glob).unwrap();
    }
    assert!(!NEVER_IMPORTED.contains(&"HOSTNAME"));
}
