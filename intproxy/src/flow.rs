//! The intproxy's half of per-stream credit ([`remora_protocol::flow`]): what
//! it may still send on a stream to the agent ([`SendWindow`]) and what it
//! owes back for the agent's data it has written to the local app
//! ([`Inbound`]).
//!
//! Without [`Capabilities::FLOW_CONTROL`](remora_protocol::Capabilities) (an
//! agent or operator of protocol v1/v2) the window never runs out and the
//! agent's data waits in a bounded per-stream queue whose fullness makes the
//! link wait, as before v3.

use remora_protocol::flow::{CREDIT_BATCH, MAX_MESSAGES_IN_WINDOW, STREAM_WINDOW, credit_cost};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::Semaphore;

/// Chunks of the agent's data queued per stream when the link has no flow
/// control: the link waits for room (at most 4 MiB).
pub const LEGACY_QUEUE_CAPACITY: usize = 64;

/// Credit to send data on one stream to the agent.
#[derive(Debug, Clone)]
pub struct SendWindow(Option<Arc<Semaphore>>);

impl SendWindow {
    /// A full window, or an endless one when flow control is off.
    pub fn new(enabled: bool) -> Self {
        SendWindow(enabled.then(|| Arc::new(Semaphore::new(STREAM_WINDOW as usize))))
    }

    /// Wait for the credit of a data message of `len` bytes and use it up.
    /// `false` when the window was closed (the stream is over).
    pub async fn take(&self, len: usize) -> bool {
        let Some(sem) = &self.0 else {
            return true;
        };
        match sem.acquire_many(credit_cost(len)).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// The agent passed `bytes` on. More than a full window is not kept.
    pub fn grant(&self, bytes: u32) {
        if let Some(sem) = &self.0 {
            let room = (STREAM_WINDOW as usize).saturating_sub(sem.available_permits());
            sem.add_permits((bytes as usize).min(room));
        }
    }
}

/// The agent's data of one stream that the intproxy holds (queued or being
/// written), counted in credit.
#[derive(Debug, Clone)]
pub struct Inbound {
    enabled: bool,
    held: Arc<AtomicU32>,
}

/// What the link does with one more message of the agent's.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Within the window: queue it without waiting.
    Queue,
    /// No flow control: queue it, waiting for room.
    Wait,
    /// The agent sent beyond its credit: end the stream.
    Violation,
}

impl Inbound {
    pub fn new(enabled: bool) -> Self {
        Inbound {
            enabled,
            held: Arc::default(),
        }
    }

    /// The capacity of the stream's queue: every message a full window can
    /// hold, plus the half close and the close.
    pub fn queue_capacity(&self) -> usize {
        if self.enabled {
            MAX_MESSAGES_IN_WINDOW + 2
        } else {
            LEGACY_QUEUE_CAPACITY
        }
    }

    /// Account for a data message of `len` bytes arriving.
    pub fn admit(&self, len: usize) -> Admit {
        if !self.enabled {
            return Admit::Wait;
        }
        let cost = credit_cost(len);
        let held = self.held.fetch_add(cost, Ordering::AcqRel) + cost;
        if held > STREAM_WINDOW {
            Admit::Violation
        } else {
            Admit::Queue
        }
    }

    /// Account for the half close arriving (it costs no credit).
    pub fn admit_end(&self) -> Admit {
        if self.enabled {
            Admit::Queue
        } else {
            Admit::Wait
        }
    }

    /// The bookkeeping of the writer that passes this stream's data on.
    pub fn returner(&self) -> CreditReturn {
        CreditReturn {
            inbound: self.clone(),
            owed: 0,
        }
    }
}

/// Counts what a stream's writer has passed on and says when to return it.
#[derive(Debug)]
pub struct CreditReturn {
    inbound: Inbound,
    owed: u32,
}

impl CreditReturn {
    /// `len` bytes were written; the credit to return now, if a batch is due.
    pub fn written(&mut self, len: usize) -> Option<u32> {
        if !self.inbound.enabled {
            return None;
        }
        let cost = credit_cost(len);
        self.inbound.held.fetch_sub(cost, Ordering::AcqRel);
        self.owed += cost;
        (self.owed >= CREDIT_BATCH).then(|| std::mem::take(&mut self.owed))
    }
}

/// A stream's credit as its pumping task sees it.
#[derive(Debug)]
pub struct StreamFlow {
    /// Credit for the app's bytes to the agent.
    pub window: SendWindow,
    /// Credit owed for the agent's bytes once written to the app.
    pub returner: CreditReturn,
}

/// A stream's credit as the link task sees it.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) window: SendWindow,
    pub(crate) inbound: Inbound,
}

impl Route {
    pub(crate) fn new(flow_control: bool) -> Self {
        Route {
            window: SendWindow::new(flow_control),
            inbound: Inbound::new(flow_control),
        }
    }

    pub(crate) fn flow(&self) -> StreamFlow {
        StreamFlow {
            window: self.window.clone(),
            returner: self.inbound.returner(),
        }
    }
}
