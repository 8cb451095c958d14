//! HTTP filters of a filtered steal: compiled once at subscribe time, then
//! matched against each request's head.

use hyper::HeaderMap;
use regex::{Regex, RegexBuilder};
use remora_protocol::incoming::HttpFilter;

/// A validated [`HttpFilter`].
#[derive(Debug, Clone)]
pub(super) enum CompiledFilter {
    /// Matched case-insensitively against each `name: value` header line.
    Header(Regex),
    /// Matched against the path and query.
    Path(Regex),
    /// Exact method, case-insensitive.
    Method(String),
    AllOf(Vec<CompiledFilter>),
    AnyOf(Vec<CompiledFilter>),
}

/// What a filter is matched against.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestView<'a> {
    pub method: &'a str,
    /// Path and query as sent (`/api/x?y=1`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

impl CompiledFilter {
    /// Compile every regex of `filter`.
    ///
    /// # Errors
    /// A user-facing message naming the bad pattern and why it is bad:
    /// `header filter "(": unclosed group`.
    pub(super) fn compile(filter: &HttpFilter) -> Result<CompiledFilter, String> {
        Ok(match filter {
            HttpFilter::Header(pattern) => CompiledFilter::Header(
                regex(pattern, true).map_err(|e| bad("header", pattern, &e))?,
            ),
            HttpFilter::Path(pattern) => {
                CompiledFilter::Path(regex(pattern, false).map_err(|e| bad("path", pattern, &e))?)
            }
            HttpFilter::Method(method) => {
                if method.is_empty() {
                    return Err("method filter \"\": a method is needed".to_owned());
                }
                CompiledFilter::Method(method.clone())
            }
            HttpFilter::AllOf(all) => {
                CompiledFilter::AllOf(all.iter().map(Self::compile).collect::<Result<_, _>>()?)
            }
            HttpFilter::AnyOf(any) => {
                CompiledFilter::AnyOf(any.iter().map(Self::compile).collect::<Result<_, _>>()?)
            }
        })
    }

    /// Whether the request is taken. An empty `AllOf` takes everything, an
    /// empty `AnyOf` nothing.
    pub(super) fn matches(&self, request: &RequestView<'_>) -> bool {
        match self {
            CompiledFilter::Header(regex) => request.headers.iter().any(|(name, value)| {
                let line = format!(
                    "{}: {}",
                    name.as_str(),
                    String::from_utf8_lossy(value.as_bytes())
                );
                regex.is_match(&line)
            }),
            CompiledFilter::Path(regex) => regex.is_match(request.path_and_query),
            CompiledFilter::Method(method) => method.eq_ignore_ascii_case(request.method),
            CompiledFilter::AllOf(all) => all.iter().all(|f| f.matches(request)),
            CompiledFilter::AnyOf(any) => any.iter().any(|f| f.matches(request)),
        }
    }
}

/// Compiled-size limit of one filter regex, so a subscriber cannot make the
/// agent build a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn regex(pattern: &str, case_insensitive: bool) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// `regex::Error` renders the pattern with a caret over several lines; keep
/// the last line's reason (`unclosed group`).
fn bad(what: &str, pattern: &str, error: &regex::Error) -> String {
    let text = error.to_string();
    let reason = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text)
        .trim();
    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
    format!("{what} filter {pattern:?}: {reason}")
}

#[cfg(test)]
mod tests;
