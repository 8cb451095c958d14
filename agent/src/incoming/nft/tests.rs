//! Tests of the nftables ruleset text and of reading `nft -i`'s answers.

use super::*;

#[test]
fn the_first_port_creates_the_whole_owned_table_in_one_transaction() {
    let line = create_table(4242, RemotePort(8080), ListenerPort(40123));
    assert!(!line.contains('\n'), "one line is one nft -i transaction");
    let commands: Vec<&str> = line.split(" ; add ").collect();
    assert_eq!(
        commands,
        [
            "add table inet remora_4242 { flags owner ; comment \"remora agent pid 4242: \
             incoming traffic redirection\" ; }",
            "map inet remora_4242 ports { type inet_service : inet_service ; }",
            "chain inet remora_4242 prerouting { type nat hook prerouting priority -110 ; \
             policy accept ; }",
            "chain inet remora_4242 output { type nat hook output priority -110 ; policy accept ; }",
            "rule inet remora_4242 prerouting meta mark 0x72656d6f return",
            "rule inet remora_4242 prerouting meta l4proto tcp fib daddr type local redirect to \
             :tcp dport map @ports",
            "rule inet remora_4242 output meta mark 0x72656d6f return",
            "rule inet remora_4242 output meta l4proto tcp fib daddr type local redirect to :tcp \
             dport map @ports",
            "element inet remora_4242 ports { 8080 : 40123 }",
        ]
    );
}

#[test]
fn later_ports_are_map_elements() {
    assert_eq!(
        add_port(7, RemotePort(443), ListenerPort(35000)),
        "add element inet remora_7 ports { 443 : 35000 }"
    );
    assert_eq!(
        remove_port(7, RemotePort(443)),
        "delete element inet remora_7 ports { 443 }"
    );
}

#[test]
fn remora_tables_are_found_in_a_listing() {
    let listing = "table ip nat\ntable inet remora_123\ntable inet remora_x\n\
                   table ip remora_9\ntable inet filter\ntable inet remora_\n";
    assert_eq!(
        remora_tables(listing),
        [
            ("inet".to_owned(), "remora_123".to_owned(), 123),
            ("ip".to_owned(), "remora_9".to_owned(), 9),
        ]
    );
    assert_eq!(table_pid("remora_77"), Some(77));
    assert_eq!(table_pid("remoraX_77"), None);
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn a_command_that_worked_has_no_output_before_the_marker() {
    let stderr = lines(
        "Error: syntax error, unexpected newline, expecting string\nremora_sync_3\n             ^",
    );
    assert_eq!(command_output(&stderr, "remora_sync_3"), Some(vec![]));
    assert_eq!(
        command_output(&stderr[..1], "remora_sync_3"),
        None,
        "marker not seen yet"
    );
}

#[test]
fn a_failed_command_keeps_its_error_and_drops_the_markers() {
    // What nft 1.0.6 writes for a rejected transaction followed by a marker.
    let stderr = lines(
        "Error: Could not process rule: Operation not permitted\n\
         add element inet remora_1 ports { 80 : 4444 }\n\
         \x20                ^^^^^^^^\n\
         Error: syntax error, unexpected newline, expecting string\n\
         remora_sync_12",
    );
    let output = command_output(&stderr, "remora_sync_12").unwrap();
    assert_eq!(
        output[0],
        "Error: Could not process rule: Operation not permitted"
    );
    assert_eq!(output.len(), 3);
    assert_eq!(
        command_output(&stderr, "remora_sync_1"),
        None,
        "not a prefix match"
    );
}
