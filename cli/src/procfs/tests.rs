//! Tests for parsing /proc (real formats, fake trees).

use super::*;

const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
";

const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";

#[test]
fn listening_rows_only_with_their_addresses() {
    let v4 = parse_tcp_listeners(TCP);
    assert_eq!(v4.len(), 1, "the established row is not a listener");
    assert_eq!(v4[&4242], "127.0.0.1:8080".parse().unwrap());
    let v6 = parse_tcp_listeners(TCP6);
    assert_eq!(v6[&777], "[::1]:80".parse().unwrap());
}

#[test]
fn fib_trie_local_addresses_without_loopback() {
    let trie = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.213.0.4
        /30 link UNICAST
     |-- 10.213.0.6
        /32 host LOCAL
  +-- 127.0.0.0/8 2 0 2
     |-- 127.0.0.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.213.0.6
        /32 host LOCAL
";
    assert_eq!(
        parse_fib_trie_local(trie),
        vec![Ipv4Addr::new(10, 213, 0, 6)]
    );
}

/// A fake `/proc` with processes `(pid, ppid, cmdline)`.
fn fake(procs: &[(u32, u32, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (pid, ppid, cmd) in procs {
        let dir = root.path().join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::write(dir.join("cmdline"), cmd.replace(' ', "\0")).unwrap();
        let stat = format!(
            "{pid} (a (b) c) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0",
            1000 + pid
        );
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(
            dir.join("status"),
            "Name:\ta\nUid:\t1000\t1000\t1000\t1000\n",
        )
        .unwrap();
    }
    root
}

#[test]
fn stat_parses_names_with_parentheses_and_spaces() {
    let root = fake(&[(7, 1, "sleep 9")]);
    let proc = Proc::at(root.path());
    assert_eq!(
        proc.stat(7),
        Some(Stat {
            state: 'S',
            ppid: 1,
            pgid: 1,
            start: 1007
        })
    );
    assert_eq!(proc.cmdline(7).as_deref(), Some("sleep 9"));
    assert_eq!(proc.uid(7), Some(1000));
}

#[test]
fn group_members_leave_out_zombies() {
    let root = fake(&[
        (1, 0, "init"),
        (7, 1, "app"),
        (8, 7, "worker"),
        (9, 7, "dead"),
    ]);
    for (pid, state) in [(7, "S"), (8, "R"), (9, "Z")] {
        let stat = format!("{pid} (x) {state} 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0");
        std::fs::write(root.path().join(format!("{pid}/stat")), stat).unwrap();
    }
    assert_eq!(Proc::at(root.path()).group_members(7), vec![7, 8]);
}

#[test]
fn a_tree_is_a_process_and_all_its_descendants() {
    let root = fake(&[
        (1, 0, "init"),
        (10, 1, "sh"),
        (11, 10, "app"),
        (12, 11, "worker"),
        (20, 1, "other"),
    ]);
    let proc = Proc::at(root.path());
    assert_eq!(proc.tree(10), BTreeSet::from([10, 11, 12]));
}

#[test]
fn tree_listening_finds_a_childs_listening_socket() {
    let root = fake(&[(1, 0, "init"), (10, 1, "sh"), (11, 10, "app")]);
    let base = root.path();
    std::fs::create_dir_all(base.join("10/net")).unwrap();
    std::fs::write(base.join("10/net/tcp"), TCP).unwrap();
    std::os::unix::fs::symlink("socket:[4242]", base.join("11/fd/3")).unwrap();
    std::os::unix::fs::symlink("/dev/null", base.join("11/fd/0")).unwrap();
    let proc = Proc::at(base);
    assert_eq!(
        proc.tree_listening(10),
        vec!["127.0.0.1:8080".parse().unwrap()]
    );
    assert_eq!(
        proc.listener_pid(10, "127.0.0.1:8080".parse().unwrap()),
        Some(11)
    );
    assert_eq!(proc.listener_pid(10, "127.0.0.1:9".parse().unwrap()), None);
}
