//! Tests of the target syntax and `/proc/<PID>/stat` parsing.

use super::*;

#[test]
fn parses_pid_targets_and_refuses_others() {
    assert_eq!("pid/4242".parse::<TargetPid>(), Ok(TargetPid(4242)));
    assert_eq!(TargetPid(7).to_string(), "pid/7");
    for bad in ["4242", "pid/", "pid/-1", "pid/0", "pod/api", "pid/12x"] {
        let err = bad.parse::<TargetPid>().unwrap_err();
        assert!(err.to_string().contains("pid/<PID>"), "{err}");
    }
}

#[test]
fn stat_parsing_survives_odd_command_names() {
    let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                987654 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
    let stat = ProcStat::parse(line).unwrap();
    assert_eq!(stat.state, 'S');
    assert_eq!(stat.start_time, 987654);
    assert!(!stat.is_gone());

    let zombie = line.replace(") S ", ") Z ");
    assert!(ProcStat::parse(&zombie).unwrap().is_gone());
    assert_eq!(ProcStat::parse("garbage"), None);
}

#[test]
fn reads_its_own_stat() {
    let me = TargetPid(std::process::id());
    let stat = ProcStat::read(me).unwrap();
    assert!(!stat.is_gone());
    assert_eq!(ProcStat::read(me).unwrap().start_time, stat.start_time);
}
