//! Message filters: header (or attribute) name to regex, all of which must
//! match, and the check that two filters cannot both match one message.
//!
//! # Overlap
//! Two filters *overlap* when some message could match both. A header named
//! by only one of them does not separate them (a message may carry both
//! headers), so they overlap exactly when, for every header both name, the
//! two regexes have a common match. That is decided exactly, not guessed
//! from the pattern text: each regex (with the unanchored search semantics
//! used for matching) is compiled to a DFA and the product of the two DFAs
//! is searched for a state where both accept. Patterns a DFA cannot express
//! (Unicode word boundaries, or DFAs past [`DFA_SIZE_LIMIT`]) are treated as
//! overlapping ([`Overlap::Undecided`]), and the refusal says so: a session is
//! never routed messages another one could claim.

use regex::Regex;
use regex_automata::Anchored;
use regex_automata::dfa::{Automaton, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;

/// The most memory one pattern's DFA may take in the overlap check.
pub const DFA_SIZE_LIMIT: usize = 8 << 20;

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A filter must name at least one header: an empty one would take every
    /// message.
    #[error(
        "a message_filter must name at least one header (an empty filter would take every message)"
    )]
    Empty,
    /// A pattern is not a valid regex.
    #[error("message_filter {header:?}: {pattern:?} is not a valid regex: {source}")]
    Regex {
        /// The header it was given for.
        header: String,
        /// The pattern.
        pattern: String,
        /// The regex crate's error.
        #[source]
        source: regex::Error,
    },
}

/// Header name to regex; a message matches when it has every named header
/// and each value matches (unanchored, as `Regex::is_match`: write `^…$` to
/// match whole values). Header names are compared exactly (brokers treat
/// them case-sensitively).
#[derive(Clone)]
pub struct MessageFilter {
    rules: BTreeMap<String, Regex>,
}

impl fmt::Debug for MessageFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for MessageFilter {
    /// `{x-user = "^alice$", x-tenant = "7"}`, in header order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (header, re)) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{header} = {:?}", re.as_str())?;
        }
        f.write_str("}")
    }
}

impl PartialEq for MessageFilter {
    fn eq(&self, other: &Self) -> bool {
        self.patterns().eq(other.patterns())
    }
}

impl Eq for MessageFilter {}

impl MessageFilter {
    /// A filter from header names to patterns.
    pub fn new<K, V>(rules: impl IntoIterator<Item = (K, V)>) -> Result<Self, FilterError>
    where
        K: Into<String>,
        V: AsRef<str>,
    {
        let mut out = BTreeMap::new();
        for (header, pattern) in rules {
            let header = header.into();
            let pattern = pattern.as_ref();
            let re = Regex::new(pattern).map_err(|source| FilterError::Regex {
                header: header.clone(),
                pattern: pattern.to_owned(),
                source,
            })?;
            out.insert(header, re);
        }
        if out.is_empty() {
            return Err(FilterError::Empty);
        }
        Ok(Self { rules: out })
    }

    /// The header names and their patterns, in header order.
    pub fn patterns(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().map(|(h, re)| (h.as_str(), re.as_str()))
    }

    /// Whether a message with these headers matches.
    pub fn matches(&self, headers: &BTreeMap<String, String>) -> bool {
        self.rules
            .iter()
            .all(|(h, re)| headers.get(h).is_some_and(|v| re.is_match(v)))
    }

    /// Whether some message could match both filters; see the module docs.
    pub fn overlap(&self, other: &MessageFilter) -> Overlap {
        let mut undecided = None;
        for (header, mine) in &self.rules {
            let Some(theirs) = other.rules.get(header) else {
                continue;
            };
            match regexes_intersect(mine.as_str(), theirs.as_str()) {
                Some(true) => {}
                Some(false) => {
                    return Overlap::Disjoint {
                        header: header.clone(),
                    };
                }
                None => undecided = undecided.or_else(|| Some(header.clone())),
            }
        }
        match undecided {
            Some(header) => Overlap::Undecided { header },
            None => Overlap::Overlapping,
        }
    }
}

/// The answer of [`MessageFilter::overlap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// No message can match both: this header's patterns have no common match.
    Disjoint {
        /// The header that separates them.
        header: String,
    },
    /// Some message matches both.
    Overlapping,
    /// The patterns for this header are beyond the exact check (see the
    /// module docs); treated as overlapping.
    Undecided {
        /// The header whose patterns could not be compared.
        header: String,
    },
}

impl Overlap {
    /// Whether the two filters must not be held by two sessions at once.
    pub fn conflicts(&self) -> bool {
        !matches!(self, Overlap::Disjoint { .. })
    }
}

/// Whether some text is matched (anywhere, as `Regex::is_match`) by both
/// patterns; `None` when either cannot be compiled to a DFA within limits.
fn regexes_intersect(a: &str, b: &str) -> Option<bool> {
    let a = unanchored_dfa(a)?;
    let b = unanchored_dfa(b)?;
    let start_config = start::Config::new().anchored(Anchored::Yes);
    let sa = a.start_state(&start_config).ok()?;
    let sb = b.start_state(&start_config).ok()?;
    let mut seen: HashSet<(StateID, StateID)> = HashSet::new();
    let mut todo: VecDeque<(StateID, StateID)> = VecDeque::new();
    seen.insert((sa, sb));
    todo.push_back((sa, sb));
    while let Some((x, y)) = todo.pop_front() {
        // Matches are reported one step late; the end of input flushes them.
        if a.is_match_state(a.next_eoi_state(x)) && b.is_match_state(b.next_eoi_state(y)) {
            return Some(true);
        }
        for byte in 0..=255u8 {
            let nx = a.next_state(x, byte);
            let ny = b.next_state(y, byte);
            if a.is_dead_state(nx)
                || b.is_dead_state(ny)
                || a.is_quit_state(nx)
                || b.is_quit_state(ny)
            {
                continue;
            }
            if seen.insert((nx, ny)) {
                todo.push_back((nx, ny));
            }
        }
    }
    Some(false)
}

/// A DFA that accepts exactly the texts `pattern` is found in: the pattern
/// wrapped in `(?s:.*)` on both sides, searched anchored at the start.
fn unanchored_dfa(pattern: &str) -> Option<dense::DFA<Vec<u32>>> {
    let wrapped = format!("(?s:.*)(?:{pattern})(?s:.*)");
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(regex_automata::dfa::StartKind::Anchored)
                .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
        )
        .build(&wrapped)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(rules: &[(&str, &str)]) -> MessageFilter {
        MessageFilter::new(rules.iter().copied()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn all_named_headers_must_match() {
        let filter = f(&[("x-user", "^alice$"), ("x-tenant", "7")]);
        assert!(filter.matches(&headers(&[("x-user", "alice"), ("x-tenant", "17")])));
        assert!(!filter.matches(&headers(&[("x-user", "alice")])));
        assert!(!filter.matches(&headers(&[("x-user", "alicex"), ("x-tenant", "7")])));
        assert!(!filter.matches(&headers(&[("X-User", "alice"), ("x-tenant", "7")])));
    }

    #[test]
    fn empty_and_invalid_filters_are_refused_with_the_reason() {
        let empty: [(&str, &str); 0] = [];
        assert!(matches!(MessageFilter::new(empty), Err(FilterError::Empty)));
        let err = MessageFilter::new([("x-user", "(")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x-user") && err.contains("not a valid regex"),
            "{err}"
        );
    }

    #[test]
    fn anchored_names_are_disjoint_and_a_prefix_overlaps() {
        let alice = f(&[("x-user", "^alice$")]);
        let bob = f(&[("x-user", "^bob$")]);
        assert_eq!(
            alice.overlap(&bob),
            Overlap::Disjoint {
                header: "x-user".into()
            }
        );
        // Unanchored "ali" is found in "alice".
        assert_eq!(
            alice.overlap(&f(&[("x-user", "ali")])),
            Overlap::Overlapping
        );
        assert_eq!(
            alice.overlap(&f(&[("x-user", "^ali$")])),
            Overlap::Disjoint {
                header: "x-user".into()
            }
        );
        assert_eq!(
            f(&[("x-user", "^a")]).overlap(&f(&[("x-user", "e$")])),
            Overlap::Overlapping
        );
        assert_eq!(
            f(&[("x-n", "^[0-9]+$")]).overlap(&f(&[("x-n", "^[a-z]+$")])),
            Overlap::Disjoint {
                header: "x-n".into()
            }
        );
    }

    #[test]
    fn different_headers_overlap_and_one_separating_header_suffices() {
        assert!(
            f(&[("x-user", "^alice$")])
                .overlap(&f(&[("x-tenant", "^7$")]))
                .conflicts()
        );
        let a = f(&[("x-user", "^alice$"), ("x-tenant", "^7$")]);
        let b = f(&[("x-user", "alice"), ("x-tenant", "^8$")]);
        assert_eq!(
            a.overlap(&b),
            Overlap::Disjoint {
                header: "x-tenant".into()
            }
        );
    }

    #[test]
    fn unicode_word_boundaries_are_undecided_and_conflict() {
        let a = f(&[("x-user", r"\balice\b")]);
        let b = f(&[("x-user", "^bob$")]);
        let overlap = a.overlap(&b);
        assert_eq!(
            overlap,
            Overlap::Undecided {
                header: "x-user".into()
            }
        );
        assert!(overlap.conflicts());
    }

    proptest! {
        /// Whenever both filters match a concrete value, the check must say
        /// they overlap: the check is never wrong in the unsafe direction.
        #[test]
        fn a_common_match_is_always_found(
            a in "[a-c]{0,3}", b in "[a-c]{0,3}",
            anchor_a in 0u8..4, anchor_b in 0u8..4,
            value in "[a-c]{0,6}",
        ) {
            let anchor = |p: &str, k: u8| match k {
                0 => p.to_owned(),
                1 => format!("^{p}"),
                2 => format!("{p}$"),
                _ => format!("^{p}$"),
            };
            let fa = f(&[("h", &anchor(&a, anchor_a))]);
            let fb = f(&[("h", &anchor(&b, anchor_b))]);
            let h = headers(&[("h", &value)]);
            if fa.matches(&h) && fb.matches(&h) {
                prop_assert!(fa.overlap(&fb).conflicts(), "{fa} and {fb} both match {value:?}");
            }
        }
    }
}
