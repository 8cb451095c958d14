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

const RULES: &[Rule] = &[
    Rule::Tree("/proc"),
    Rule::Tree("/sys"),
    Rule::Tree("/dev"),
    Rule::SharedLibrary,
    Rule::Tree("/lib"),
    Rule::Tree("/lib64"),
    Rule::Tree("/usr/lib"),
    Rule::Tree("/usr/lib64"),
    Rule::Tree("/usr/local/lib"),
    Rule::Tree("/usr/share"),
    Rule::Tree("/usr"),
    Rule::Tree("/bin"),
    Rule::Tree("/sbin"),
    Rule::Tree("/usr/bin"),
    Rule::Tree("/usr/sbin"),
    Rule::Tree("/usr/local/bin"),
    Rule::StartsWith("/etc/ld.so."),
    Rule::Exact("/etc/nsswitch.conf"),
    Rule::Exact("/etc/localtime"),
    Rule::Tree("/etc/ssl"),
    Rule::Tree("/etc/ca-certificates"),
    Rule::Tree("/etc/alternatives"),
    Rule::Exact("/etc/passwd"),
    Rule::Exact("/etc/group"),
    Rule::Tree("/tmp"),
    Rule::Tree("/var/tmp"),
    Rule::Tree("/run/user"),
    Rule::HomeDotfile,
    Rule::StartsWith("/root/."),
    Rule::HomeDir,
    Rule::Exact("/root"),
    Rule::Exact("/etc/bash.bashrc"),
    Rule::Exact("/etc/profile"),
    Rule::Exact("/etc/inputrc"),
    Rule::Exact("/etc/environment"),
    Rule::Tree("/etc/profile.d"),
    Rule::Exact("/etc/gai.conf"),
    Rule::Exact("/etc/host.conf"),
    Rule::Anywhere("/site-packages"),
    Rule::Anywhere("/dist-packages"),
    Rule::Anywhere("/node_modules"),
    Rule::Tree("/nix/store"),
    Rule::Tree("/opt/homebrew"),
];

fn tree(path: &str, p: &str) -> bool {
    path.strip_prefix(p)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn anywhere(path: &str, p: &str) -> bool {
    path.match_indices(p).any(|(i, _)| {
        let rest = &path[i + p.len()..];
        rest.is_empty() || rest.starts_with('/')
    })
}

fn shared_library(path: &str) -> bool {
    // Strip trailing `.<digits>` groups, then require a `.so` suffix.
    let mut rest = path;
    loop {
        if rest.ends_with(".so") {
            return true;
        }
        match rest.rfind('.') {
            Some(dot)
                if dot + 1 < rest.len() && rest[dot + 1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                rest = &rest[..dot];
            }
            _ => return false,
        }
    }
}

fn home_entry(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/home/")?;
    let (user, after) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (!user.is_empty()).then_some(after)
}

fn matches_rule(rule: Rule, path: &str) -> bool {
    match rule {
        Rule::Tree(p) => tree(path, p),
        Rule::Exact(p) => path == p,
        Rule::StartsWith(p) => path.starts_with(p),
        Rule::Anywhere(p) => anywhere(path, p),
        Rule::SharedLibrary => shared_library(path),
        Rule::HomeDotfile => home_entry(path).is_some_and(|after| after.starts_with("/.")),
        Rule::HomeDir => home_entry(path).is_some_and(str::is_empty),
    }
}

/// Whether `path` (absolute, normalised) is local by default.
pub fn matches(path: &str) -> bool {
    RULES.iter().any(|rule| matches_rule(*rule, path))
}
