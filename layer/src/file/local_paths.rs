//! The pre-guard answer "this path certainly stays local", read off the
//! caller's C string in one short pass over data precomputed at load time.
//!
//! Every read-only `open` and every `stat` of a program asks the fs policy
//! first ([`super::ops::stays_local`]). The policy's full decision
//! ([`remora_config::FsPolicy::decide_bytes`]) measures the string, checks it
//! for `//`, `/./` and `/..`, and walks the default-local rules: about 250
//! instructions per call, most of the layer's cost on a program's local file
//! calls (issue 15, docs/benchmarks.md). The common local paths (`/tmp/...`,
//! `/usr/...`, `/proc/...`, the working directory) need much less: their
//! first component, or a prefix, already says "local", and the rest of the
//! path only has to be free of `..` components, which alone can lead out of
//! that tree.
//!
//! The answer here is a subset of the policy's `Local`: `true` only when the
//! full decision is certainly `Local`, `false` meaning "ask the policy". It is
//! never used when the user's config has patterns (they are checked before the
//! default-local rules and can send a `/tmp` path to the target).

use libc::c_char;
use remora_config::FsConfig;

/// First path components of `remora_config::DEFAULT_LOCAL`'s trees (`^/tmp(/|$)`
/// and so on) that are a single component. A test checks each against the
/// policy, so this list cannot say "local" where the policy does not.
const LOCAL_ROOTS: &[&[u8]] = &[
    b"proc", b"sys", b"dev", b"lib", b"lib64", b"usr", b"bin", b"sbin", b"tmp",
];

/// Longest root in [`LOCAL_ROOTS`]: a longer first component is none of them.
const ROOT_MAX: usize = 8;

/// A first component of up to [`ROOT_MAX`] bytes as one little-endian integer.
const fn key(name: &[u8]) -> u64 {
    let mut k = 0u64;
    let mut i = 0;
    while i < name.len() {
        k |= (name[i] as u64) << (8 * i);
        i += 1;
    }
    k
}

/// [`LOCAL_ROOTS`] as keys.
const ROOT_KEYS: [u64; LOCAL_ROOTS.len()] = {
    let mut keys = [0u64; LOCAL_ROOTS.len()];
    let mut i = 0;
    while i < LOCAL_ROOTS.len() {
        assert!(LOCAL_ROOTS[i].len() <= ROOT_MAX);
        keys[i] = key(LOCAL_ROOTS[i]);
        i += 1;
    }
    keys
};

/// What the fast answer needs, computed once when the layer starts.
#[derive(Debug, Clone, Default)]
pub struct LocalPaths {
    /// False when the config has user patterns: then only the policy decides.
    enabled: bool,
    /// The process's own local directories (working directory, executable's
    /// directory), without a trailing `/`; only those the policy compares as
    /// they are (absolute, no `//`, `/.`).
    prefixes: Vec<Vec<u8>>,
}

impl LocalPaths {
    /// For a policy built from `fs` with [`remora_config::FsPolicy::with_local_prefixes`]`(prefixes)`.
    pub fn new(fs: &FsConfig, prefixes: &[String]) -> LocalPaths {
        let enabled = fs.not_found.is_empty()
            && fs.local.is_empty()
            && fs.read_write.is_empty()
            && fs.read_only.is_empty();
        let prefixes = prefixes
            .iter()
            .map(|p| p.trim_end_matches('/').as_bytes())
            .filter(|p| {
                p.starts_with(b"/")
                    && !p.windows(2).any(|w| w == b"//" || w == b"/.")
                    && !p.contains(&0)
            })
            .map(<[u8]>::to_vec)
            .collect();
        LocalPaths { enabled, prefixes }
    }

    /// Whether the policy certainly decides `Local` for `path`, for reading
    /// and for writing alike (its default-local rules and local prefixes do
    /// not look at the access kind). `false` means "ask the policy".
    ///
    /// # Safety
    /// `path` must point to a NUL-terminated string.
    #[inline]
    pub unsafe fn certainly_local(&self, path: *const c_char) -> bool {
        if !self.enabled {
            return false;
        }
        let p = path.cast::<u8>();
        // SAFETY: every read below is at or before the string's NUL: a byte is
        // read only after the ones before it were found not to be NUL.
        unsafe {
            if *p != b'/' {
                return false;
            }
            let mut k = 0u64;
            let mut i = 1;
            loop {
                let c = *p.add(i);
                if c == b'/' || c == 0 {
                    break;
                }
                if i > ROOT_MAX {
                    k = u64::MAX;
                    break;
                }
                k |= u64::from(c) << (8 * (i - 1));
                i += 1;
            }
            let under_root = k != u64::MAX && ROOT_KEYS.contains(&k);
            (under_root || self.prefixes.iter().any(|pre| under(p, pre))) && !has_dot_dot(path)
        }
    }
}

/// Whether the string at `p` is `prefix` or starts with `prefix/`.
///
/// # Safety
/// `p` must point to a NUL-terminated string; `prefix` has no NUL.
unsafe fn under(p: *const u8, prefix: &[u8]) -> bool {
    for (i, &b) in prefix.iter().enumerate() {
        // SAFETY: the bytes before i matched `prefix`, which has no NUL, so
        // the string's NUL is at i or later.
        if unsafe { *p.add(i) } != b {
            return false;
        }
    }
    // SAFETY: as above, the NUL is at prefix.len() or later.
    matches!(unsafe { *p.add(prefix.len()) }, b'/' | 0)
}

/// Whether `path` (absolute) has a `..` component. libc's vectorised `strchr`
/// finds the dots: a typical path has one or two.
///
/// # Safety
/// `path` must point to a NUL-terminated string that starts with `/`.
unsafe fn has_dot_dot(path: *const c_char) -> bool {
    let mut at = path;
    loop {
        // SAFETY: `at` is within the string (at most at its NUL).
        let dot = unsafe { libc::strchr(at, c_int_of(b'.')) };
        if dot.is_null() {
            return false;
        }
        let d = dot.cast::<u8>();
        // SAFETY: the dot is not the first byte (that is `/`), so d-1 is in the
        // string; d+1 is at most the NUL, and d+2 is read only when d+1 is not.
        let component =
            unsafe { *d.sub(1) == b'/' && *d.add(1) == b'.' && matches!(*d.add(2), b'/' | 0) };
        if component {
            return true;
        }
        // SAFETY: the dot is not the NUL, so the next byte is in the string.
        at = unsafe { dot.add(1) };
    }
}

fn c_int_of(b: u8) -> libc::c_int {
    libc::c_int::from(b)
}

#[cfg(test)]
mod tests;
