//! Tests of environment parsing and glob filtering.

use super::*;

const RAW: &[u8] = b"PATH=/usr/bin\0DATABASE_URL=postgres://db/app?x=1\0DATABASE_PASSWORD=s3cret\0\
AWS_KEY=k\0EMPTY=\0NOEQUALS\0=novar\0HOME=/root\0";

fn request(include: &[&str], exclude: &[&str]) -> EnvRequest {
    EnvRequest {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn everything_by_default_values_split_at_the_first_equals() {
    let vars = filter_env(RAW, &request(&[], &[])).unwrap();
    let keys: Vec<&str> = vars.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "AWS_KEY",
            "DATABASE_PASSWORD",
            "DATABASE_URL",
            "EMPTY",
            "HOME",
            "PATH"
        ]
    );
    assert_eq!(vars["DATABASE_URL"], "postgres://db/app?x=1");
    assert_eq!(vars["EMPTY"], "");
}

#[test]
fn include_and_exclude_globs_select() {
    let vars = filter_env(RAW, &request(&["DATABASE_*", "HOME"], &["*PASSWORD"])).unwrap();
    let keys: Vec<&str> = vars.keys().map(String::as_str).collect();
    assert_eq!(keys, ["DATABASE_URL", "HOME"]);

    let vars = filter_env(RAW, &request(&[], &["AWS_*", "PAT?"])).unwrap();
    assert!(!vars.contains_key("AWS_KEY"));
    assert!(!vars.contains_key("PATH"));
    assert!(vars.contains_key("HOME"));
}

#[test]
fn matching_is_case_sensitive_like_env_names() {
    let vars = filter_env(RAW, &request(&["home"], &[])).unwrap();
    assert!(vars.is_empty());
}

#[test]
fn a_bad_glob_is_invalid_input() {
    let err = filter_env(RAW, &request(&["[unclosed"], &[])).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
    assert!(err.message.contains("[unclosed"), "{err}");
}

#[tokio::test]
async fn reads_a_real_environ_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("environ"), b"A=1\0B=2\0").unwrap();
    let reply = read_env(dir.path(), &request(&["A"], &[])).await.unwrap();
    assert_eq!(
        reply.vars.into_iter().collect::<Vec<_>>(),
        [("A".into(), "1".into())]
    );

    let missing = read_env(&dir.path().join("nope"), &request(&[], &[]))
        .await
        .unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
}
