//! File policy: for an absolute path and an access kind, whether the layer opens
//! the file locally, reads or writes it in the target, or pretends it is missing.

mod default_local;

use regex::bytes::RegexSet;
use std::borrow::Cow;

use crate::{FsConfig, FsMode, Issues, Result};

/// Paths that stay local whatever `fs.mode` says (user lists still win). They
/// hold what the local process needs to run at all: its loader, libraries,
/// interpreters, terminal, temporary files and the developer's own dotfiles.
pub const DEFAULT_LOCAL: &[&str] = &[
    // Kernel views of the local process and machine (the layer asks the agent
    // explicitly when it wants the target's).
    r"^/proc(/|$)",
    r"^/sys(/|$)",
    // Devices: terminals, /dev/null, /dev/urandom.
    r"^/dev(/|$)",
    // Shared libraries wherever they live (`libfoo.so`, `libfoo.so.1.2`).
    r"\.so(\.\d+)*$",
    // Library trees; also cover /usr/lib/python3.*, /usr/local/lib/python3.*, node, perl.
    r"^/lib(/|$)",
    r"^/lib64(/|$)",
    r"^/usr/lib(/|$)",
    r"^/usr/lib64(/|$)",
    r"^/usr/local/lib(/|$)",
    // Architecture-independent data: locales, zoneinfo, terminfo, man pages.
    r"^/usr/share(/|$)",
    // Everything else under /usr (libexec, include, local installs such as
    // /usr/local/sbin that shells probe on every PATH lookup).
    r"^/usr(/|$)",
    // Executables the local process may exec.
    r"^/bin(/|$)",
    r"^/sbin(/|$)",
    r"^/usr/bin(/|$)",
    r"^/usr/sbin(/|$)",
    r"^/usr/local/bin(/|$)",
    // The dynamic loader's cache and configuration.
    r"^/etc/ld\.so\.",
    // How local libc looks up users and hosts (the layer hooks DNS itself).
    r"^/etc/nsswitch\.conf$",
    // The local timezone.
    r"^/etc/localtime$",
    // Local TLS trust roots, matching the local libraries that read them.
    r"^/etc/ssl(/|$)",
    r"^/etc/ca-certificates(/|$)",
    // Debian's alternatives symlinks for local executables.
    r"^/etc/alternatives(/|$)",
    // Local users and groups, so `getpwuid` names the developer.
    r"^/etc/passwd$",
    r"^/etc/group$",
    // Temporary files and per-user runtime directories (sockets, locks).
    r"^/tmp(/|$)",
    r"^/var/tmp(/|$)",
    r"^/run/user(/|$)",
    // Dotfiles and dot-directories in home directories (shell, git, pyenv, cargo, caches).
    r"^/home/[^/]+/\.",
    r"^/root/\.",
    // Home directories themselves (shells and interpreters stat them at start).
    r"^/home/[^/]+$",
    r"^/root$",
    // Local shell start-up files and resolver tuning of the local libc.
    r"^/etc/(bash\.bashrc|profile|inputrc|environment)$",
    r"^/etc/profile\.d(/|$)",
    r"^/etc/(gai|host)\.conf$",
    // Language package trees installed anywhere (virtualenvs, project dependencies).
    r"/site-packages(/|$)",
    r"/dist-packages(/|$)",
    r"/node_modules(/|$)",
    // Package managers' stores.
    r"^/nix/store(/|$)",
    r"^/opt/homebrew(/|$)",
];

/// What the layer does with one file operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsDecision {
    /// Call the local libc function.
    Local,
    /// Open the target's file for reading.
    Remote,
    /// Open the target's file with writing allowed.
    RemoteWrite,
    /// Fail with `ENOENT`.
    NotFound,
}

/// [`FsConfig`] compiled for the layer: decide with [`FsPolicy::decide`] on every call.
#[derive(Debug, Clone)]
pub struct FsPolicy {
    mode: FsMode,
    not_found: RegexSet,
    local: RegexSet,
    read_write: RegexSet,
    read_only: RegexSet,
    /// Whether any of the four sets has a pattern: most runs have none, and
    /// asking each set costs a call on every hooked path call.
    has_patterns: bool,
    local_prefixes: Vec<String>,
}

impl FsPolicy {
    /// Compiles the user's lists and the built-in [`DEFAULT_LOCAL`] list.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] naming every invalid regex (`fs.read_only[2]: ...`).
    pub fn new(config: &FsConfig) -> Result<FsPolicy> {
        let mut issues = Issues::default();
        let mut compile = |key: &str, patterns: &[String]| {
            compile_set(key, patterns, &mut issues).unwrap_or_else(RegexSet::empty)
        };
        let not_found = compile("fs.not_found", &config.not_found);
        let local = compile("fs.local", &config.local);
        let read_write = compile("fs.read_write", &config.read_write);
        let read_only = compile("fs.read_only", &config.read_only);
        // Cannot fail: the built-in patterns are constants covered by the tests.
        let has_patterns = [&not_found, &local, &read_write, &read_only]
            .iter()
            .any(|set| !set.is_empty());
        issues.into_result(FsPolicy {
            mode: config.mode,
            has_patterns,
            not_found,
            local,
            read_write,
            read_only,
            local_prefixes: Vec::new(),
        })
    }

    /// Adds directories that stay local like the built-in list (the layer adds
    /// the working directory and the executable's directory). A prefix matches
    /// itself and everything under it. `/` and relative paths are ignored: a
    /// process started from `/` must not make every file local.
    pub fn with_local_prefixes(mut self, prefixes: Vec<String>) -> FsPolicy {
        let prefixes = prefixes.into_iter().filter_map(|p| {
            let trimmed = p.trim_end_matches('/');
            trimmed.starts_with('/').then(|| trimmed.to_owned())
        });
        self.local_prefixes.extend(prefixes);
        self
    }

    /// Decides one operation on `path`; `write` is true when the file is opened
    /// for writing (or created, truncated, renamed, removed). Relative paths are
    /// local (the caller resolves them first); `.` and `..` are resolved lexically.
    pub fn decide(&self, path: &str, write: bool) -> FsDecision {
        self.decide_bytes(path.as_bytes(), write)
    }

    /// [`FsPolicy::decide`] on a path's bytes, as a C string holds them: the
    /// layer decides without a UTF-8 pass, so a local path costs none. The
    /// user's patterns match the bytes (a non-UTF-8 path can match them too).
    pub fn decide_bytes(&self, path: &[u8], write: bool) -> FsDecision {
        if !path.starts_with(b"/") {
            return FsDecision::Local;
        }
        let path = normalize(path);
        let path = path.as_ref();
        // Every hooked path call of every process lands here: skip the user
        // sets when there are none (the default), which costs a search each.
        if self.has_patterns {
            if let Some(decision) = self.decide_by_patterns(path, write) {
                return decision;
            }
        }
        if default_local::matches(path) || self.has_local_prefix(path) {
            FsDecision::Local
        } else {
            match (self.mode, write) {
                (FsMode::Local, _) | (FsMode::Read, true) => FsDecision::Local,
                (FsMode::Read, false) | (FsMode::Write, false) => FsDecision::Remote,
                (FsMode::Write, true) => FsDecision::RemoteWrite,
            }
        }
    }

    /// The decision of the user's four lists, in their order of precedence.
    fn decide_by_patterns(&self, path: &[u8], write: bool) -> Option<FsDecision> {
        let hit = |set: &RegexSet| !set.is_empty() && set.is_match(path);
        if hit(&self.not_found) {
            Some(FsDecision::NotFound)
        } else if hit(&self.local) {
            Some(FsDecision::Local)
        } else if hit(&self.read_write) {
            Some(if write {
                FsDecision::RemoteWrite
            } else {
                FsDecision::Remote
            })
        } else if hit(&self.read_only) {
            Some(if write {
                FsDecision::Local
            } else {
                FsDecision::Remote
            })
        } else {
            None
        }
    }

    fn has_local_prefix(&self, path: &[u8]) -> bool {
        self.local_prefixes.iter().any(|prefix| {
            path.strip_prefix(prefix.as_bytes())
                .is_some_and(|r| r.is_empty() || r.starts_with(b"/"))
        })
    }
}

/// Compiles `patterns` into one set, recording each invalid one as `key[i]`.
pub(crate) fn compile_set(key: &str, patterns: &[String], issues: &mut Issues) -> Option<RegexSet> {
    let before = issues.0.len();
    for (i, pattern) in patterns.iter().enumerate() {
        if let Err(err) = regex::Regex::new(pattern) {
            issues.push(format!("{key}[{i}]"), regex_message(pattern, &err));
        }
    }
    if issues.0.len() > before {
        return None;
    }
    match RegexSet::new(patterns) {
        Ok(set) => Some(set),
        Err(err) => {
            // Each pattern compiled alone; together they can still exceed the size limit.
            issues.push(key, format!("{err} (use fewer or simpler patterns)"));
            None
        }
    }
}

/// `invalid regex "(": <regex's explanation>`, one line.
pub(crate) fn regex_message(pattern: &str, err: &regex::Error) -> String {
    let why = match err {
        regex::Error::Syntax(text) => {
            // The syntax error is a multi-line drawing; its last line says what is wrong.
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or(text)
                .trim()
                .to_owned()
        }
        other => other.to_string(),
    };
    let why = why.strip_prefix("error: ").unwrap_or(&why);
    format!("invalid regex {pattern:?}: {why} (see https://docs.rs/regex/#syntax)")
}

/// Whether `path` has no `//`, `/./`, `/..` nor a trailing `/.`. Every hooked path
/// call of a program asks, so the common answer (clean) comes from a word-at-a-time
/// scan for `/` followed by `/` or `.`, eight bytes per step; only paths with such a
/// pair (dotfiles, `..`) get the exact byte-by-byte look. Hand-rolled rather than
/// `str::contains` three times: that was the layer's largest cost on local calls.
fn is_clean(path: &[u8]) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    /// The high bit of each byte is set iff that byte of `v` is zero (exact: no
    /// carries cross bytes).
    fn zero_bytes(v: u64) -> u64 {
        !(((v & LOW7).wrapping_add(LOW7)) | v | LOW7)
    }
    let b = path;
    let mut chunks = b.chunks_exact(8);
    // Whether the byte just before the current chunk is `/`.
    let mut slash_before = false;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let slash = zero_bytes(w ^ 0x2f2f_2f2f_2f2f_2f2f);
        let slash_or_dot = slash | zero_bytes(w ^ 0x2e2e_2e2e_2e2e_2e2e);
        // Little-endian: byte i+1 sits 8 bits above byte i.
        if (slash << 8) & slash_or_dot != 0 || (slash_before && slash_or_dot & 0x80 != 0) {
            return clean_exact(b);
        }
        slash_before = slash >> 63 != 0;
    }
    for &c in chunks.remainder() {
        if slash_before && (c == b'/' || c == b'.') {
            return clean_exact(b);
        }
        slash_before = c == b'/';
    }
    true
}

/// [`is_clean`], byte by byte.
fn clean_exact(b: &[u8]) -> bool {
    !b.iter().enumerate().any(|(i, &c)| {
        c == b'/'
            && match b.get(i + 1) {
                Some(b'/') => true,
                Some(b'.') => matches!(b.get(i + 2), None | Some(b'/') | Some(b'.')),
                _ => false,
            }
    })
}

/// Resolves `.`, `..` and repeated slashes without touching the file system.
fn normalize(path: &[u8]) -> Cow<'_, [u8]> {
    if is_clean(path) {
        return Cow::Borrowed(path);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests;
