//! Every `--flag` the documentation, the README and the messages of the
//! config and CLI crates name is a flag the real command line accepts
//! (`remora`'s clap command, every subcommand; `remora-operator`'s), or a
//! flag of another program the docs show (cargo, VS Code, the benchmark
//! binaries). A renamed flag that the docs or an error still name fails here.

use clap::CommandFactory;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Flags of programs that are not remora, as the docs use them.
const OTHER_PROGRAMS: &[(&str, &[&str])] = &[
    (
        "cargo",
        &[
            "--release",
            "--workspace",
            "--all-targets",
            "--test",
            "--bin",
            "--package",
        ],
    ),
    ("code (VS Code)", &["--install-extension"]),
    ("cargo nextest", &["--run-ignored", "--no-capture"]),
    ("kubernetes-validate", &["--strict"]),
    ("kubectl", &["--for", "--from", "--type", "--raw"]),
    (
        "remora-kube-sim",
        &["--runtime", "--tls", "--rbac-service-account"],
    ),
    ("nsenter", &["--net"]),
    ("setpriv (util-linux)", &["--pdeathsig"]),
    (
        "dockerd (a private one in agent/tests/docker.rs)",
        &[
            "--data-root",
            "--exec-root",
            "--pidfile",
            "--config-file",
            "--iptables",
            "--ip6tables",
            "--ip-forward",
            "--ip-masq",
            "--bridge",
        ],
    ),
    ("docker run", &["--network", "--hostname", "--security-opt"]),
    ("apt-get install", &["--no-install-recommends"]),
    ("busybox", &["--install"]),
    ("remora-agent (started by the intproxy)", &["--fd-broker"]),
    ("pg_dump", &["--schema-only"]),
    ("pg_restore", &["--section"]),
    ("mariadb-backup", &["--backup", "--prepare"]),
    ("cp", &["--reflink"]),
    ("valgrind", &["--tool", "--callgrind-out-file"]),
    ("cloud-pubsub-emulator", &["--host", "--port"]),
    (
        "tansu (docs/queues.md)",
        &[
            "--listener-url",
            "--advertised-listener-url",
            "--storage-engine",
        ],
    ),
    (
        "mariadb-dump",
        &[
            "--no-data",
            "--where",
            "--single-transaction",
            "--routines",
            "--triggers",
        ],
    ),
    (
        "mydumper",
        &[
            "--lock-all-tables",
            "--trx-consistency-only",
            "--no-locks",
            "--rows",
        ],
    ),
];

/// Pages about other programs, not checked, with why.
const OTHER_DOCS: &[(&str, &str)] = &[(
    "docs/kube-sim.md",
    "the test cluster's page: kubectl's flags and remora-kube-sim's own",
)];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn long_flags(cmd: &clap::Command, out: &mut BTreeSet<String>) {
    out.insert("--help".into());
    out.insert("--version".into());
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            out.insert(format!("--{long}"));
        }
        for alias in arg.get_all_aliases().unwrap_or_default() {
            out.insert(format!("--{alias}"));
        }
    }
    for sub in cmd.get_subcommands() {
        long_flags(sub, out);
    }
}

/// `--name` tokens in `text` (a `-` or word character before them means it
/// is not a flag; a trailing `-` is not part of it).
fn flags_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let prev = if i == 0 { b' ' } else { bytes[i - 1] };
        let starts = !(prev.is_ascii_alphanumeric() || prev == b'-' || prev == b'_')
            && bytes[i] == b'-'
            && bytes[i + 1] == b'-'
            && bytes[i + 2].is_ascii_lowercase();
        if starts {
            let mut j = i + 2;
            while j < bytes.len()
                && (bytes[j].is_ascii_lowercase() || bytes[j].is_ascii_digit() || bytes[j] == b'-')
            {
                j += 1;
            }
            // `--http-*` patterns and `producer --what--> consumer` channel
            // notes end in a dash: not flags.
            if !text[i..j].ends_with('-') {
                found.push(text[i..j].to_owned());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    found
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext)
            // Unit tests feed wrong flags on purpose.
            && path.file_name().is_none_or(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn flags_in_docs_and_errors_exist() {
    let root = root();
    let mut known = BTreeSet::new();
    long_flags(&remora_cli::args::Cli::command(), &mut known);
    long_flags(&remora_operator::Args::command(), &mut known);
    long_flags(&remora_agent::args::Args::command(), &mut known);
    for (_, flags) in OTHER_PROGRAMS {
        known.extend(flags.iter().map(|f| (*f).to_owned()));
    }
    // The benchmark binaries parse their few flags by hand.
    let mut bench = Vec::new();
    files(&root.join("tests/src/bin"), "rs", &mut bench);
    for file in &bench {
        let text = std::fs::read_to_string(file).unwrap();
        let quoted: Vec<String> = flags_in(&text)
            .into_iter()
            .filter(|f| text.contains(&format!("\"{f}")))
            .collect();
        known.extend(quoted);
    }

    let mut sources = vec![root.join("README.md")];
    files(&root.join("docs"), "md", &mut sources);
    files(&root.join("config/src"), "rs", &mut sources);
    files(&root.join("cli/src"), "rs", &mut sources);
    assert!(sources.len() > 10, "{sources:?}");
    let mut unknown = Vec::new();
    for file in &sources {
        if OTHER_DOCS.iter().any(|(doc, _)| file.ends_with(doc)) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for flag in flags_in(line) {
                if !known.contains(&flag) {
                    let file = file.strip_prefix(&root).unwrap_or(file).display();
                    unknown.push(format!("{file}:{}: {flag}", n + 1));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "flags that the command line does not have:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_checker_sees_a_flag_that_does_not_exist() {
    assert_eq!(
        flags_in("use `--incoming steal` or --http-method-filter GET; not a-- b--c"),
        ["--incoming", "--http-method-filter"]
    );
    let mut known = BTreeSet::new();
    long_flags(&remora_cli::args::Cli::command(), &mut known);
    assert!(known.contains("--steal") && known.contains("--http-method"));
    assert!(!known.contains("--incoming") && !known.contains("--http-method-filter"));
}

#[test]
fn the_readme_links_only_inside_the_repository() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        !readme.contains("../shared"),
        "README links outside the repository"
    );
    // Every relative link target exists.
    for part in readme.split("](").skip(1) {
        let target = part.split(')').next().unwrap_or_default();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap_or_default();
        assert!(
            !path.starts_with("..") && root.join(path).exists(),
            "README links to {target:?}, which is not in the repository"
        );
    }
    assert!(readme.contains("docs/architecture.md"));
}
