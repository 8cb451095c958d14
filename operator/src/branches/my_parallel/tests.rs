//! The parallel copy's protocol against stand-in `mariadb`, `mydumper` and
//! `myloader` programs (shell scripts) that write what they see to a
//! journal: when commits are held, when they are released, and that a
//! refusal or a failed dump releases them. The real programs against the
//! real server: `tests/tests/db_branches_local.rs`.

use super::{Copied, Parallel, dump_and_restore, readers};
use crate::branches::source::Server;
use remora_protocol::db::DbKind;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_connections_that_read_rows_are_counted_from_mydumpers_log() {
    // As mydumper 0.10 logs at -v 3 (to stderr).
    let log = "** Message: 08:33:19.325: Thread 2 connected using MySQL connection ID 25\n\
               ** Message: 08:33:19.334: Transactions started, unlocking tables\n\
               ** Message: 08:33:19.335: Thread 2 dumping data for `shop`.`a`\n\
               ** Message: 08:33:19.335: Thread 4 dumping data for `shop`.`c`\n\
               ** Message: 08:33:19.336: Thread 2 dumping data for `shop`.`d`\n\
               ** Message: 08:33:19.336: Thread 3 dumping schema for `shop`.`a`\n";
    assert_eq!(readers(log).into_iter().collect::<Vec<_>>(), [2, 4]);
    let one = readers("** Message: Thread 1 dumping data for `s`.`t`\n");
    assert_eq!(one.len(), 1);
}

/// A `mariadb` that answers the operator's session as a server that grants
/// the stage would, journaling every line it is sent and its own pid.
const GRANTING_MARIADB: &str = r#"#!/bin/sh
echo "mariadb pid $$" >> "$J"
while IFS= read -r line; do
  echo "mariadb: $line" >> "$J"
  case "$line" in
    *"BACKUP STAGE END"*) echo "remora: commits released" ;;
    *"BLOCK_COMMIT"*) echo "remora: commits blocked" ;;
  esac
done
echo "mariadb: session closed" >> "$J"
"#;

/// A `mydumper` that starts its snapshots, then reads rows only once the
/// stage has ended (as a real one may take long to): if commits were held
/// until it exits, it gives up and fails.
const MYDUMPER: &str = r#"#!/bin/sh
echo "mydumper: started" >> "$J"
echo "** Message: Thread 1 connected using MySQL connection ID 7" >&2
echo "** Message: Thread 2 connected using MySQL connection ID 8" >&2
echo "** Message: Transactions started, unlocking tables" >&2
i=0
until grep -q "BACKUP STAGE END" "$J"; do
  i=$((i + 1)); [ $i -gt 3000 ] && exit 3; sleep 0.01
done
echo "mydumper: rows read" >> "$J"
echo '** Message: Thread 1 dumping data for `shop`.`a`' >&2
echo '** Message: Thread 2 dumping data for `shop`.`b`' >&2
"#;

struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new(mariadb: &str, mydumper: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("mariadb", mariadb),
            ("mydumper", mydumper),
            ("myloader", "#!/bin/sh\necho myloader >> \"$J\"\n"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.path().join("journal"), "").unwrap();
        Self { dir }
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("journal")).unwrap()
    }

    fn copy(&self) -> Result<Parallel, String> {
        let bin: PathBuf = self.dir.path().to_owned();
        let journal = bin.join("journal");
        let dial = move |program: &str| {
            let mut cmd = Command::new(bin.join(program));
            cmd.env("J", &journal);
            cmd
        };
        let server = Server {
            kind: DbKind::Mysql,
            host: "127.0.0.1".into(),
            port: 3306,
            user: "reader".into(),
            password: None,
        };
        dump_and_restore(
            &dial,
            &server,
            "shop",
            &server,
            "branch",
            &BTreeSet::new(),
            &self.dir.path().join("dump"),
            2,
        )
    }
}

/// The index of the first journal line containing `what`.
fn at(journal: &str, what: &str) -> usize {
    journal
        .lines()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in the journal:\n{journal}"))
}

fn gone(journal: &str) -> bool {
    let pid = journal
        .lines()
        .find_map(|l| l.strip_prefix("mariadb pid "))
        .expect("the session's pid");
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn commits_are_held_from_before_the_snapshots_start_until_they_all_have_not_until_the_dump_ends() {
    let fakes = Fakes::new(GRANTING_MARIADB, MYDUMPER);
    let Ok(Parallel::Copied(Copied { readers, .. })) = fakes.copy() else {
        panic!("not copied: {}", fakes.journal());
    };
    let journal = fakes.journal();
    assert_eq!(readers, 2, "{journal}");
    let blocked = at(&journal, "BACKUP STAGE BLOCK_COMMIT");
    assert!(
        at(&journal, "lock_wait_timeout = 10") <= blocked,
        "{journal}"
    );
    assert!(blocked < at(&journal, "mydumper: started"), "{journal}");
    assert!(
        at(&journal, "BACKUP STAGE END") < at(&journal, "mydumper: rows read"),
        "{journal}"
    );
    assert!(
        at(&journal, "mariadb: session closed") < at(&journal, "myloader"),
        "{journal}"
    );
}

#[test]
fn a_server_refusing_the_stage_is_said_in_its_words_and_nothing_is_dumped() {
    let refusing = "#!/bin/sh\necho \"mariadb pid $$\" >> \"$J\"\nread line\n\
                    echo 'ERROR 1227 (42000) at line 1: Access denied; you need (at least one \
                    of) the RELOAD privilege(s) for this operation' >&2\nexit 1\n";
    let fakes = Fakes::new(refusing, MYDUMPER);
    let Ok(Parallel::NotHeld(why)) = fakes.copy() else {
        panic!("held: {}", fakes.journal());
    };
    assert!(why.contains("BACKUP STAGE BLOCK_COMMIT"), "{why}");
    assert!(why.contains("RELOAD privilege"), "{why}");
    assert!(!fakes.journal().contains("mydumper"), "{}", fakes.journal());
}

#[test]
fn a_dump_failing_before_its_snapshots_start_releases_the_commits() {
    let failing = "#!/bin/sh\necho 'mydumper: started' >> \"$J\"\n\
                   echo '** (mydumper:1): CRITICAL **: Error connecting to database: refused' >&2\n\
                   exit 1\n";
    let fakes = Fakes::new(GRANTING_MARIADB, failing);
    let err = fakes.copy().unwrap_err();
    assert!(err.contains("Error connecting to database"), "{err}");
    let journal = fakes.journal();
    assert!(!journal.contains("myloader"), "{journal}");
    // The session holding the stage is gone: the server ended the stage.
    assert!(gone(&journal), "{journal}");
}
