//! Targets named with their namespace, for an operator serving several
//! namespaces: a client names its target as `namespace/<ns>/<target>`
//! (`remora run --operator kube` always does). The canonical name keeps the
//! prefix only outside the operator's default namespace, so the sessions,
//! policies and objects of that namespace read as before.

use crate::{Error, Result};

/// What starts a namespaced target string.
pub const PREFIX: &str = "namespace/";

/// `namespace/<ns>/<rest>` as `(Some(ns), rest)`; anything else as
/// `(None, target)`.
pub fn split(target: &str) -> (Option<&str>, &str) {
    match target
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('/'))
    {
        Some((ns, rest)) => (Some(ns), rest),
        None => (None, target),
    }
}

/// `target` in `namespace`.
pub fn qualify(namespace: &str, target: &str) -> String {
    format!("{PREFIX}{namespace}/{target}")
}

/// Check a namespace name (a DNS label).
///
/// # Errors
/// [`Error::InvalidTarget`] naming `target`.
pub fn check(namespace: &str, target: &str) -> Result<()> {
    let valid = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidTarget {
            target: target.to_owned(),
            reason: format!("{namespace:?} is not a namespace name (a DNS label)"),
        })
    }
}

/// The canonical name of `target` (`namespace/<ns>/<canonical>`, or just
/// `<canonical>` in `default_namespace`), and its namespace if it names one.
///
/// # Errors
/// The target or its namespace does not parse.
pub fn canonical(
    target: &str,
    default_namespace: Option<&str>,
) -> Result<(String, Option<String>)> {
    let (namespace, rest) = split(target);
    let parsed: crate::KubeTarget = rest.parse()?;
    match namespace {
        Some(ns) => {
            check(ns, target)?;
            if Some(ns) == default_namespace {
                Ok((parsed.to_string(), Some(ns.to_owned())))
            } else {
                Ok((qualify(ns, &parsed.to_string()), Some(ns.to_owned())))
            }
        }
        None => Ok((parsed.to_string(), None)),
    }
}

#[cfg(test)]
mod tests;
