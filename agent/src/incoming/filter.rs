//! HTTP filters of filtered steals: validated one by one at subscribe time,
//! then combined per port into a [`Routes`] table that picks, for each
//! request, the first subscriber whose filter takes it.
//!
//! # Cost with many filters
//! A port may hold one filter per session (the operator lets a whole team
//! steal from one service). Matching them one after the other would scan
//! every header line once per filter. Instead every header pattern of every
//! filter goes into **one** [`regex::bytes::RegexSet`] (and every path
//! pattern into another): each header line is scanned once, whatever the
//! number of filters, and yields the set of patterns it matches. Each
//! filter's tree (`all_of`/`any_of`/method) is then a few boolean lookups.

use regex::bytes::{RegexSet, RegexSetBuilder};
use regex::{Regex, RegexBuilder};
use remora_protocol::incoming::HttpFilter;

/// One header line of a request as filters see it.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeaderLine<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// What a filter is matched against.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestView<'a> {
    pub method: &'a str,
    /// Path and query as sent (`/api/x?y=1`).
    pub path_and_query: &'a str,
    pub headers: &'a [HeaderLine<'a>],
}

/// Compiled-size limit of one filter regex, so a subscriber cannot make the
/// agent build a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Check every regex of `filter` compiles (within [`REGEX_SIZE_LIMIT`]).
///
/// # Errors
/// A user-facing message naming the bad pattern and why it is bad:
/// `header filter "(": unclosed group`.
pub(super) fn validate(filter: &HttpFilter) -> Result<(), String> {
    match filter {
        HttpFilter::Header(pattern) => {
            regex(pattern, true).map_err(|e| bad("header", pattern, &e))?;
        }
        HttpFilter::Path(pattern) => {
            regex(pattern, false).map_err(|e| bad("path", pattern, &e))?;
        }
        HttpFilter::Method(method) => {
            if method.is_empty() {
                return Err("method filter \"\": a method is needed".to_owned());
            }
        }
        HttpFilter::AllOf(all) | HttpFilter::AnyOf(all) => {
            all.iter().try_for_each(validate)?;
        }
    }
    Ok(())
}

/// A filter as a tree over the combined sets' pattern indexes.
#[derive(Debug, Clone)]
enum Node {
    /// Index in the header set.
    Header(usize),
    /// Index in the path set.
    Path(usize),
    Method(String),
    AllOf(Vec<Node>),
    AnyOf(Vec<Node>),
}

impl Node {
    fn matches(&self, hits: &Hits, method: &str) -> bool {
        match self {
            Node::Header(i) => hits.header.get(*i),
            Node::Path(i) => hits.path.get(*i),
            Node::Method(m) => m.eq_ignore_ascii_case(method),
            Node::AllOf(all) => all.iter().all(|n| n.matches(hits, method)),
            Node::AnyOf(any) => any.iter().any(|n| n.matches(hits, method)),
        }
    }
}

/// Which patterns of the sets matched one request.
struct Hits {
    header: Bits,
    path: Bits,
}

/// A set of pattern indexes; up to 64 without an allocation (every request
/// not taken builds one).
enum Bits {
    Small(u64),
    Large(Vec<bool>),
}

impl Bits {
    fn new(len: usize) -> Bits {
        if len <= 64 {
            Bits::Small(0)
        } else {
            Bits::Large(vec![false; len])
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Bits::Small(bits) => *bits |= 1 << i,
            Bits::Large(bits) => bits[i] = true,
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Bits::Small(bits) => bits & (1 << i) != 0,
            Bits::Large(bits) => bits[i],
        }
    }
}

/// The filtered subscribers of one port, in subscription order, with their
/// filters combined for matching.
#[derive(Debug)]
pub(super) struct Routes<T> {
    /// Every header pattern, matched against `name: value` lines.
    headers: RegexSet,
    /// Every path pattern, matched against the path and query.
    paths: RegexSet,
    routes: Vec<(Node, T)>,
}

struct Builder {
    headers: Vec<String>,
    paths: Vec<String>,
}

impl Builder {
    fn node(&mut self, filter: &HttpFilter) -> Node {
        match filter {
            HttpFilter::Header(p) => {
                self.headers.push(p.clone());
                Node::Header(self.headers.len() - 1)
            }
            HttpFilter::Path(p) => {
                self.paths.push(p.clone());
                Node::Path(self.paths.len() - 1)
            }
            HttpFilter::Method(m) => Node::Method(m.clone()),
            HttpFilter::AllOf(all) => Node::AllOf(all.iter().map(|f| self.node(f)).collect()),
            HttpFilter::AnyOf(any) => Node::AnyOf(any.iter().map(|f| self.node(f)).collect()),
        }
    }
}

fn set(patterns: &[String], case_insensitive: bool) -> Result<RegexSet, String> {
    RegexSetBuilder::new(patterns)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT.saturating_mul(patterns.len().max(1)))
        .build()
        .map_err(|e| format!("the port's combined filters do not compile: {e}"))
}

impl<T> Routes<T> {
    /// Combine `entries` (each already [`validate`]d), first match wins.
    ///
    /// # Errors
    /// When the combined sets exceed their size limits.
    pub(super) fn build<'a>(
        entries: impl IntoIterator<Item = (&'a HttpFilter, T)>,
    ) -> Result<Routes<T>, String> {
        let mut builder = Builder {
            headers: Vec::new(),
            paths: Vec::new(),
        };
        let routes: Vec<(Node, T)> = entries
            .into_iter()
            .map(|(filter, to)| (builder.node(filter), to))
            .collect();
        Ok(Routes {
            headers: set(&builder.headers, true)?,
            paths: set(&builder.paths, false)?,
            routes,
        })
    }

    /// The first route whose filter takes `request`.
    pub(super) fn pick(&self, request: &RequestView<'_>) -> Option<&T> {
        let mut hits = Hits {
            header: Bits::new(self.headers.len()),
            path: Bits::new(self.paths.len()),
        };
        if !self.headers.is_empty() {
            // `name: value` is built on the stack when it fits.
            let mut stack = [0u8; 256];
            let mut heap = Vec::new();
            for header in request.headers {
                let (name, value) = (header.name.as_bytes(), header.value);
                let len = name.len() + 2 + value.len();
                let line: &[u8] = if len <= stack.len() {
                    stack[..name.len()].copy_from_slice(name);
                    stack[name.len()..name.len() + 2].copy_from_slice(b": ");
                    stack[name.len() + 2..len].copy_from_slice(value);
                    &stack[..len]
                } else {
                    heap.clear();
                    heap.extend_from_slice(name);
                    heap.extend_from_slice(b": ");
                    heap.extend_from_slice(value);
                    &heap
                };
                // Most lines match no filter: find that out without
                // collecting which ones (an allocation per line).
                if !self.headers.is_match(line) {
                    continue;
                }
                for i in self.headers.matches(line).iter() {
                    hits.header.set(i);
                }
            }
        }
        if !self.paths.is_empty() {
            for i in self.paths.matches(request.path_and_query.as_bytes()).iter() {
                hits.path.set(i);
            }
        }
        self.routes
            .iter()
            .find(|(node, _)| node.matches(&hits, request.method))
            .map(|(_, to)| to)
    }
}

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
