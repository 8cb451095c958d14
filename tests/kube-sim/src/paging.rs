//! List paging (`limit` and `continue`), as kubectl (`--chunk-size`, 500 by default) and
//! kube-rs' watcher (pages of 500) list.
//!
//! A real API server reads every page from etcd at the resourceVersion of the first one, so
//! the pages of one list are a consistent snapshot. Here the first page of a list that does
//! not fit in `limit` keeps the whole (filtered, sorted) result as a snapshot; its continue
//! token names the snapshot and the offset of the next page. Snapshots live for
//! [`SNAPSHOT_TTL`] (etcd's default compaction interval) and at most [`SNAPSHOTS_KEPT`] are
//! kept; a token whose snapshot is gone gets 410 Gone, as a token from before a compaction
//! does.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::{
    error::{ApiError, Result},
    store::random_hex,
};

/// How long a list's snapshot serves its continue tokens.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(300);
/// How many snapshots are kept at most.
pub const SNAPSHOTS_KEPT: usize = 64;

#[derive(Debug)]
struct Snapshot {
    id: String,
    rv: u64,
    items: Arc<Vec<Value>>,
    made: Instant,
}

/// The snapshots of paged lists in progress.
#[derive(Debug, Default, Clone)]
pub struct Snapshots {
    inner: Arc<Mutex<VecDeque<Snapshot>>>,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    /// The resourceVersion of the whole list (the first page's).
    pub rv: u64,
    /// Set when more items follow.
    pub continue_token: Option<String>,
    /// How many items follow this page.
    pub remaining: usize,
}

fn encode_token(id: &str, rv: u64, offset: usize) -> String {
    let json = json!({"v": "meta.k8s.io/v1", "rv": rv, "snapshot": id, "offset": offset});
    json.to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_token(token: &str) -> Option<(String, u64, usize)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let v: Value = serde_json::from_slice(&bytes?).ok()?;
    Some((
        v["snapshot"].as_str()?.to_owned(),
        v["rv"].as_u64()?,
        usize::try_from(v["offset"].as_u64()?).ok()?,
    ))
}

impl Snapshots {
    /// The page of a list: `list` gives the whole result and its resourceVersion (called only
    /// for a first page); `limit` 0 means no limit.
    pub fn page(
        &self,
        list: impl FnOnce() -> (Vec<Value>, u64),
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<Page> {
        let mut snapshots = self.inner.lock();
        snapshots.retain(|s| s.made.elapsed() < SNAPSHOT_TTL);
        let (id, rv, items, offset) = match continue_token.filter(|t| !t.is_empty()) {
            Some(token) => {
                let (id, _, offset) = decode_token(token)
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                let snap = snapshots.iter().find(|s| s.id == id).ok_or_else(|| {
                    ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    )
                })?;
                (id, snap.rv, snap.items.clone(), offset)
            }
            None => {
                let (items, rv) = list();
                if limit == 0 || items.len() <= limit {
                    return Ok(Page {
                        items,
                        rv,
                        continue_token: None,
                        remaining: 0,
                    });
                }
                let id = random_hex(8);
                let items = Arc::new(items);
                if snapshots.len() >= SNAPSHOTS_KEPT {
                    snapshots.pop_front();
                }
                snapshots.push_back(Snapshot {
                    id: id.clone(),
                    rv,
                    items: items.clone(),
                    made: Instant::now(),
                });
                (id, rv, items, 0)
            }
        };
        let start = offset.min(items.len());
        let end = if limit == 0 {
            items.len()
        } else {
            start.saturating_add(limit).min(items.len())
        };
        let remaining = items.len() - end;
        Ok(Page {
            items: items[start..end].to_vec(),
            rv,
            continue_token: (remaining > 0).then(|| encode_token(&id, rv, end)),
            remaining,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"i": i})).collect()
    }

    #[test]
    fn pages_are_a_consistent_snapshot() {
        let snaps = Snapshots::default();
        let first = snaps.page(|| (items(5), 7), 2, None).unwrap();
        assert_eq!(first.items, items(5)[0..2]);
        assert_eq!(first.remaining, 3);
        let token = first.continue_token.unwrap();
        // The list changed meanwhile: the pages still come from the first one's snapshot.
        let second = snaps
            .page(|| panic!("a continue does not list again"), 2, Some(&token))
            .unwrap();
        assert_eq!(second.items, items(5)[2..4]);
        assert_eq!(second.rv, 7);
        let third = snaps
            .page(|| unreachable!(), 2, second.continue_token.as_deref())
            .unwrap();
        assert_eq!(third.items, items(5)[4..5]);
        assert!(third.continue_token.is_none());
        // A token can be used again (a retried page).
        let again = snaps.page(|| unreachable!(), 2, Some(&token)).unwrap();
        assert_eq!(again.items, items(5)[2..4]);
        // A token whose snapshot is gone (expired, or from an earlier run) is 410 Gone.
        let stale = encode_token("0000", 7, 2);
        assert_eq!(
            snaps
                .page(|| unreachable!(), 2, Some(&stale))
                .unwrap_err()
                .code,
            410
        );
    }

    #[test]
    fn no_limit_or_a_short_list_has_no_token() {
        let snaps = Snapshots::default();
        assert!(
            snaps
                .page(|| (items(3), 1), 0, None)
                .unwrap()
                .continue_token
                .is_none()
        );
        assert!(
            snaps
                .page(|| (items(3), 1), 3, None)
                .unwrap()
                .continue_token
                .is_none()
        );
        assert_eq!(
            snaps
                .page(|| (items(3), 1), 5, Some("zz"))
                .unwrap_err()
                .code,
            400
        );
    }
}
