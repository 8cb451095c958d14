//! A fast, allocation-free matcher equivalent to [`super::DEFAULT_LOCAL`].
//!
//! The layer asks on every path-taking libc call whether the path is
//! local-by-default, in every process of a run. Compiling the regex list costs
//! milliseconds per process and matching it about a microsecond per call;
//! these rules cost neither. `DEFAULT_LOCAL` stays the documented source of
//! truth: a property test checks both agree on generated paths.

/// One rule; alternations of `DEFAULT_LOCAL` are spelled out as several.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `^P(/|$)`: P itself or anything below it.
    Tree(&'static str),
    /// `^P$`.
    Exact(&'static str),
    /// `^P`: any path starting with P.
    StartsWith(&'static str),
    /// `P(/|$)` anywhere: a path component sequence ending there.
    Anywhere(&'static str),
    /// `\.so(\.\d+)*$`.
    SharedLibrary,
    /// `^/home/[^/]+/\.`.
    HomeDotfile,
    /// `^/home/[^/]+$`.
    HomeDir,
}

/// A first path component of up to 8 bytes as one integer (little-endian, zero
/// padded): [`group`] compares one `u64` instead of strings. Longer names get a
/// key no group has.
const fn key(name: &[u8]) -> u64 {
    if name.len() > 8 {
        return u64::MAX;
    }
    let mut k = 0u64;
    let mut i = 0;
    while i < name.len() {
        k |= (name[i] as u64) << (8 * i);
        i += 1;
    }
    k
}

/// The rules for paths whose first component is `first`: rules anchored at `/` sit
/// under their first component, so a call looks at a handful of rules rather than
/// all of them.
fn group(first: &[u8]) -> &'static [Rule] {
    const K_PROC: u64 = key(b"proc");
    const K_SYS: u64 = key(b"sys");
    const K_DEV: u64 = key(b"dev");
    const K_LIB: u64 = key(b"lib");
    const K_LIB64: u64 = key(b"lib64");
    const K_USR: u64 = key(b"usr");
    const K_BIN: u64 = key(b"bin");
    const K_SBIN: u64 = key(b"sbin");
    const K_ETC: u64 = key(b"etc");
    const K_TMP: u64 = key(b"tmp");
    const K_VAR: u64 = key(b"var");
    const K_RUN: u64 = key(b"run");
    const K_HOME: u64 = key(b"home");
    const K_ROOT: u64 = key(b"root");
    const K_NIX: u64 = key(b"nix");
    const K_OPT: u64 = key(b"opt");
    match key(first) {
        K_PROC => &[Rule::Tree("/proc")],
        K_SYS => &[Rule::Tree("/sys")],
        K_DEV => &[Rule::Tree("/dev")],
        K_LIB => &[Rule::Tree("/lib")],
        K_LIB64 => &[Rule::Tree("/lib64")],
        // `/usr` covers `/usr/lib`, `/usr/share`, `/usr/local/bin`... of DEFAULT_LOCAL.
        K_USR => &[Rule::Tree("/usr")],
        K_BIN => &[Rule::Tree("/bin")],
        K_SBIN => &[Rule::Tree("/sbin")],
        K_ETC => &[
            Rule::StartsWith("/etc/ld.so."),
            Rule::Exact("/etc/nsswitch.conf"),
            Rule::Exact("/etc/localtime"),
            Rule::Tree("/etc/ssl"),
            Rule::Tree("/etc/ca-certificates"),
            Rule::Tree("/etc/alternatives"),
            Rule::Exact("/etc/passwd"),
            Rule::Exact("/etc/group"),
            Rule::Exact("/etc/bash.bashrc"),
            Rule::Exact("/etc/profile"),
            Rule::Exact("/etc/inputrc"),
            Rule::Exact("/etc/environment"),
            Rule::Tree("/etc/profile.d"),
            Rule::Exact("/etc/gai.conf"),
            Rule::Exact("/etc/host.conf"),
        ],
        K_TMP => &[Rule::Tree("/tmp")],
        K_VAR => &[Rule::Tree("/var/tmp")],
        K_RUN => &[Rule::Tree("/run/user")],
        K_HOME => &[Rule::HomeDotfile, Rule::HomeDir],
        K_ROOT => &[Rule::StartsWith("/root/."), Rule::Exact("/root")],
        K_NIX => &[Rule::Tree("/nix/store")],
        K_OPT => &[Rule::Tree("/opt/homebrew")],
        _ => &[],
    }
}

/// Rules that can match wherever a path starts.
const ANYWHERE: &[Rule] = &[
    Rule::SharedLibrary,
    Rule::Anywhere("/site-packages"),
    Rule::Anywhere("/dist-packages"),
    Rule::Anywhere("/node_modules"),
];

fn tree(path: &[u8], p: &str) -> bool {
    path.strip_prefix(p.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

fn anywhere(path: &[u8], p: &str) -> bool {
    let p = p.as_bytes();
    path.windows(p.len()).enumerate().any(|(i, w)| {
        w == p && {
            let rest = &path[i + p.len()..];
            rest.is_empty() || rest.starts_with(b"/")
        }
    })
}

fn shared_library(path: &[u8]) -> bool {
    // Strip trailing `.<digits>` groups, then require a `.so` suffix.
    let mut rest = path;
    loop {
        if rest.ends_with(b".so") {
            return true;
        }
        match rest.iter().rposition(|&b| b == b'.') {
            Some(dot) if dot + 1 < rest.len() && rest[dot + 1..].iter().all(u8::is_ascii_digit) => {
                rest = &rest[..dot];
            }
            _ => return false,
        }
    }
}

fn home_entry(path: &[u8]) -> Option<&[u8]> {
    let rest = path.strip_prefix(b"/home/")?;
    let (user, after) = match rest.iter().position(|&b| b == b'/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, &b""[..]),
    };
    (!user.is_empty()).then_some(after)
}

fn matches_rule(rule: Rule, path: &[u8]) -> bool {
    match rule {
        Rule::Tree(p) => tree(path, p),
        Rule::Exact(p) => path == p.as_bytes(),
        Rule::StartsWith(p) => path.starts_with(p.as_bytes()),
        Rule::Anywhere(p) => anywhere(path, p),
        Rule::SharedLibrary => shared_library(path),
        Rule::HomeDotfile => home_entry(path).is_some_and(|after| after.starts_with(b"/.")),
        Rule::HomeDir => home_entry(path).is_some_and(<[u8]>::is_empty),
    }
}

/// Whether `path` (absolute, normalised; bytes, as a C string holds it) is
/// local by default.
pub fn matches(path: &[u8]) -> bool {
    let anchored = path.strip_prefix(b"/").is_some_and(|rest| {
        // First components are short: a byte loop beats a searcher here.
        let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let first = &rest[..end];
        group(first).iter().any(|rule| matches_rule(*rule, path))
    });
    anchored || ANYWHERE.iter().any(|rule| matches_rule(*rule, path))
}
