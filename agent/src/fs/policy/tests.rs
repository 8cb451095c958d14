//! Hidden paths stay hidden whatever their spelling.

use super::*;
use remora_protocol::session::PathRule;

fn policy(patterns: &[&str], env: bool) -> FsPolicy {
    FsPolicy::compile(&SessionPolicy {
        fs_not_found: patterns
            .iter()
            .map(|p| PathRule {
                pattern: (*p).into(),
                label: "policy #1 in p.toml".into(),
            })
            .collect(),
        hide_process_env: env.then(|| "policy #1 in p.toml".into()),
    })
    .unwrap()
}

fn stat(path: &str) -> FsRequest {
    FsRequest::Stat {
        path: path.into(),
        follow_symlinks: true,
    }
}

#[test]
fn every_spelling_and_link_of_a_hidden_path_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("secrets")).unwrap();
    std::fs::write(root.join("secrets/token"), "x").unwrap();
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::os::unix::fs::symlink(root.join("secrets"), root.join("link")).unwrap();
    let r = root.display().to_string();
    let p = policy(&[&format!("^{r}/secrets/")], false);
    for path in [
        format!("{r}/secrets/token"),
        format!("{r}//secrets//token"),
        format!("{r}/app/../secrets/token"),
        format!("{r}/./secrets/./token"),
        format!("{r}/link/token"),
        format!("{r}/secrets/missing"),
    ] {
        let err = p.check(&stat(&path)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{path}");
        assert!(err.message.contains("fs_not_found"), "{err:?}");
    }
    assert!(p.check(&stat(&format!("{r}/app/x"))).is_ok());
    let rename = FsRequest::Rename {
        from: format!("{r}/app/x"),
        to: format!("{r}/link/y"),
    };
    assert!(p.check(&rename).is_err());
}

#[test]
fn process_environments_are_hidden_only_with_an_env_exclude() {
    let pid = std::process::id();
    for path in [
        format!("/proc/{pid}/environ"),
        "/proc/self/environ".to_owned(),
        "/proc/thread-self/environ".to_owned(),
        format!("/proc//{pid}/./mem"),
        format!("/proc/{pid}/task/{pid}/environ"),
    ] {
        assert!(policy(&[], true).check(&stat(&path)).is_err(), "{path}");
        assert!(policy(&[], false).check(&stat(&path)).is_ok(), "{path}");
    }
    assert!(
        policy(&[], true)
            .check(&stat(&format!("/proc/{pid}/status")))
            .is_ok()
    );
}
