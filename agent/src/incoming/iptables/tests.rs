//! Tests of the iptables rules and of the guard's cleanup script.

use super::*;

fn joined(args: &[Vec<String>]) -> Vec<String> {
    args.iter().map(|a| a.join(" ")).collect()
}

#[test]
fn the_chain_lets_marked_traffic_through_and_is_hooked_first() {
    assert_eq!(
        joined(&setup_args("REMORA_42")),
        [
            "-w 5 -t nat -N REMORA_42",
            "-w 5 -t nat -A REMORA_42 -m mark --mark 0x72656d6f -j RETURN",
            "-w 5 -t nat -I PREROUTING 1 -j REMORA_42",
            "-w 5 -t nat -I OUTPUT 1 -j REMORA_42",
        ]
    );
    assert_eq!(
        joined(&teardown_args("REMORA_42")),
        [
            "-w 5 -t nat -D PREROUTING -j REMORA_42",
            "-w 5 -t nat -D OUTPUT -j REMORA_42",
            "-w 5 -t nat -F REMORA_42",
            "-w 5 -t nat -X REMORA_42",
        ]
    );
}

#[test]
fn a_port_redirects_only_traffic_to_local_addresses() {
    assert_eq!(
        port_args("-A", "REMORA_42", RemotePort(8080), ListenerPort(40123)).join(" "),
        "-w 5 -t nat -A REMORA_42 -p tcp -m addrtype --dst-type LOCAL --dport 8080 -j REDIRECT \
         --to-ports 40123"
    );
}

#[test]
fn the_guard_waits_for_eof_then_tears_down_every_family() {
    let script = guard_script(&["iptables".into(), "ip6tables".into()], "REMORA_42");
    assert!(
        script.starts_with("while read -r _; do :; done; "),
        "{script}"
    );
    assert!(script.contains("; iptables -w 5 -t nat -D PREROUTING -j REMORA_42 >/dev/null 2>&1"));
    assert!(script.ends_with("; ip6tables -w 5 -t nat -X REMORA_42 >/dev/null 2>&1"));
    assert_eq!(script.matches(" -X REMORA_42").count(), 2);
}

#[test]
fn remora_chains_are_found_in_a_listing() {
    let listing = "-P PREROUTING ACCEPT\n-N REMORA_17\n-N KUBE-SERVICES\n-N REMORA_x\n\
                   -A PREROUTING -j REMORA_17\n";
    assert_eq!(remora_chains(listing), [("REMORA_17".to_owned(), 17)]);
    assert_eq!(chain_pid("REMORA_5"), Some(5));
}
