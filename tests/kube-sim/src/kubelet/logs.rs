//! Container logs on disk and the `pods/log` subresource (`logs`, `logs -f`, `--previous`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::Response;
use serde_json::Value;

use crate::{
    error::{ApiError, Result},
    http::{Body, Query, text_response},
};

/// Container logs on disk: `<dir>/<pod uid>/<container>.log` (and `.previous.log`).
#[derive(Debug, Clone)]
pub struct Logs {
    pub(super) dir: PathBuf,
}

impl Logs {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, uid: &str, container: &str, previous: bool) -> PathBuf {
        let suffix = if previous { ".previous.log" } else { ".log" };
        self.dir.join(uid).join(format!("{container}{suffix}"))
    }

    /// `GET pods/<name>/log`.
    pub async fn response(&self, pod: &Value, query: &Query) -> Result<Response<Body>> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let containers: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let container = match query.get("container") {
            Some(c) => c.to_owned(),
            None if containers.len() == 1 => containers[0].to_owned(),
            None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: {containers:?}"
                )));
            }
        };
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let previous = query.flag("previous") && query.get("previous").is_some();
        if !previous && query.flag("follow") && query.get("follow").is_some() {
            return Ok(self.follow(uid, &container));
        }
        let path = self.path(uid, &container, previous);
        let data = tokio::fs::read(&path).await.map_err(|_| {
            ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: no logs yet"
            ))
        })?;
        Ok(text_response(200, "text/plain", data))
    }
}

/// How often `logs -f` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

impl Logs {
    /// Marks a container's current log as finished (its process exited).
    pub(super) fn done_path(&self, uid: &str, container: &str) -> PathBuf {
        self.dir.join(uid).join(format!("{container}.done"))
    }

    /// `logs -f`: the file so far, then what is appended until the container exits.
    pub fn follow(&self, uid: &str, container: &str) -> Response<Body> {
        let path = self.path(uid, container, false);
        let done = self.done_path(uid, container);
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        tokio::spawn(async move {
            let mut offset = 0usize;
            loop {
                let finished = done.exists();
                if let Ok(data) = tokio::fs::read(&path).await
                    && data.len() > offset
                {
                    if tx
                        .send(bytes::Bytes::copy_from_slice(&data[offset..]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    offset = data.len();
                }
                if finished || !path.parent().is_some_and(Path::exists) {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(crate::http::channel_body(rx))
            .expect("response")
    }
}
