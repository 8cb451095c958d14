//! The namespace workers: a few OS threads that live inside the target's mount,
//! UTS and network namespaces and run every blocking job the agent has there
//! (file I/O, path resolution, reading `/etc/hosts`, unix socket connects,
//! `gethostname`). The async runtime only ever awaits their answers.

use crate::error::{Error, Result};
use crate::namespace::TargetNamespaces;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Number of namespace worker threads. A few, so that one slow job (a read on
/// a FIFO, a unix connect to a full backlog) does not stall every client.
pub const POOL_WORKERS: usize = 4;

/// Jobs waiting for a free worker before submitters have to wait.
pub const POOL_QUEUE_CAPACITY: usize = 256;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The workers are gone (the agent is shutting down) or a job panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the namespace workers are gone")]
    Gone,
    #[error("a namespace job panicked")]
    Panicked,
}

/// Handle to the worker pool. Cheap to clone; the workers stop once every
/// handle is dropped and the queue is drained.
#[derive(Debug, Clone)]
pub struct NsPool {
    /// submitters --job--> workers
    job_tx: mpsc::Sender<Job>,
}

impl NsPool {
    /// Start `workers` threads and wait until each has entered the target's
    /// namespaces.
    ///
    /// # Errors
    /// The first worker's failure to enter (e.g. [`Error::NotPermitted`]).
    pub async fn start(ns: Arc<dyn TargetNamespaces>, workers: usize) -> Result<Self> {
        let (job_tx, job_rx) = mpsc::channel::<Job>(POOL_QUEUE_CAPACITY);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut ready = Vec::with_capacity(workers);
        for index in 0..workers.max(1) {
            let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
            let ns = ns.clone();
            let job_rx = job_rx.clone();
            std::thread::Builder::new()
                .name(format!("remora-ns-{index}"))
                .spawn(move || worker(ns.as_ref(), &job_rx, ready_tx))
                .map_err(|source| Error::SpawnThread {
                    what: "namespace worker",
                    source,
                })?;
            ready.push(ready_rx);
        }
        for ready_rx in ready {
            ready_rx.await.map_err(|_| Error::ThreadLost {
                what: "namespace worker",
            })??;
        }
        Ok(NsPool { job_tx })
    }

    /// Run `job` on a worker, inside the target's namespaces, and await its
    /// result. Waits for queue space when every worker is busy.
    ///
    /// # Errors
    /// [`PoolError`] when the pool is gone or the job panicked.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(job));
            // The submitter may have given up (its client went away): fine.
            let _ = result_tx.send(outcome.map_err(|_| PoolError::Panicked));
        });
        self.job_tx.send(job).await.map_err(|_| PoolError::Gone)?;
        result_rx.await.map_err(|_| PoolError::Gone)?
    }
}

fn worker(
    ns: &dyn TargetNamespaces,
    job_rx: &Mutex<mpsc::Receiver<Job>>,
    ready_tx: oneshot::Sender<Result<()>>,
) {
    if let Err(e) = ns.enter_files() {
        let _ = ready_tx.send(Err(e));
        return;
    }
    if ready_tx.send(Ok(())).is_err() {
        return;
    }
    loop {
        // Only the worker holding the lock waits in `blocking_recv`; the others
        // queue on the lock. A poisoned lock only means another worker panicked
        // outside a job, which leaves the receiver itself intact.
        let job = job_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .blocking_recv();
        match job {
            Some(job) => job(),
            None => break,
        }
    }
}

#[cfg(test)]
mod tests;
