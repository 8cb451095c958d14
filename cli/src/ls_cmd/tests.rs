//! Tests for listing targets from a fake /proc.

use super::*;

/// A fake `/proc`: `(pid, cmdline, net namespace)`, and remora's own pid 1.
fn fake(procs: &[(u32, &str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (pid, cmd, net) in procs {
        let dir = root.path().join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::write(dir.join("cmdline"), cmd.replace(' ', "\0")).unwrap();
        std::os::unix::fs::symlink(format!("net:[{net}]"), dir.join("ns/net")).unwrap();
        std::os::unix::fs::symlink("mnt:[1]", dir.join("ns/mnt")).unwrap();
        std::os::unix::fs::symlink("uts:[1]", dir.join("ns/uts")).unwrap();
        std::fs::write(dir.join("status"), "Uid:\t0\t0\t0\t0\n").unwrap();
        std::fs::write(
            dir.join("net/fib_trie"),
            format!("Local:\n     |-- 10.213.0.{pid}\n        /32 host LOCAL\n"),
        )
        .unwrap();
    }
    root
}

#[test]
fn sandboxed_processes_first_with_their_addresses_and_remora_left_out() {
    let root = fake(&[
        (1, "/target/debug/remora ls --json", "100"),
        (2, "", "100"),
        (5, "python3 -m http.server", "100"),
        (9, "sleep infinity", "200"),
        (12, "/usr/bin/remora-agent --target pid/9", "200"),
    ]);
    let platform = LocalPlatform {
        proc: Proc::at(root.path()),
        own_pid: 1,
    };
    let targets = platform.targets().unwrap();
    let names: Vec<&str> = targets.iter().map(|t| t.target.as_str()).collect();
    assert_eq!(names, ["pid/9", "pid/5"]);
    let pod = targets[0].to_json();
    assert_eq!(pod["platform"], "local");
    assert_eq!(pod["description"], "sleep infinity");
    assert_eq!(pod["details"]["pid"], 9);
    assert_eq!(pod["details"]["sandboxed"], true);
    assert_eq!(pod["details"]["namespaces"], json!(["net"]));
    assert_eq!(pod["details"]["addresses"], json!(["10.213.0.9"]));
    assert_eq!(targets[1].details["sandboxed"], false);
    assert_eq!(targets[1].details["addresses"], json!([]));
    let table = table(&targets);
    assert!(table.contains("pid/9          10.213.0.9"), "{table}");
}

#[test]
fn the_real_platform_lists_this_test_process_parent() {
    let targets = local_platform().targets().unwrap();
    let parent = format!("pid/{}", std::os::unix::process::parent_id());
    assert!(targets.iter().any(|t| t.target == parent), "{targets:?}");
}

#[test]
fn cluster_targets_carry_their_namespace_and_get_their_own_table() {
    let entries = kube::entries(
        "shop",
        vec![
            "pod/api-1".to_owned(),
            "pod/api-1/container/app".to_owned(),
            "deployment/api".to_owned(),
        ],
    );
    let json = entries[2].to_json();
    assert_eq!(json["platform"], "kubernetes");
    assert_eq!(json["target"], "deployment/api");
    assert_eq!(
        json["details"],
        json!({"namespace": "shop", "kind": "deployment"})
    );
    let local = TargetEntry {
        target: "pid/9".into(),
        platform: "local".into(),
        description: "sleep 1".into(),
        details: json!({"sandboxed": false}),
    };
    let mut all = vec![local];
    all.extend(entries);
    let text = table(&all);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("TARGET") && lines[0].contains("COMMAND"),
        "{text}"
    );
    assert!(lines[1].starts_with("pid/9"), "{text}");
    assert_eq!(lines[2], "", "{text}");
    assert!(
        lines[3].starts_with("TARGET") && lines[3].contains("NAMESPACE"),
        "{text}"
    );
    assert!(
        lines[6].starts_with("deployment/api ") && lines[6].contains("shop"),
        "{text}"
    );
}
