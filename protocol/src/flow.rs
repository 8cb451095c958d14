//! Per-stream credit-based flow control (protocol v3,
//! [`Capabilities::FLOW_CONTROL`](crate::Capabilities::FLOW_CONTROL)).
//!
//! Every byte stream multiplexed on the client ⇄ server link (outgoing
//! connections, stolen and mirrored incoming connections) has one window per
//! direction. Each side starts every stream with [`STREAM_WINDOW`] credit for
//! the data it sends on it (from `Connected`, `NewConnection` or `Upgraded`
//! on). A data message of `n` bytes consumes [`credit_cost`]`(n)`; the
//! receiver gives credit back with a `Credit` message once it has passed the
//! bytes on (written them to the local or remote socket), in batches of at
//! least [`CREDIT_BATCH`] except when the stream ends. A sender with no credit
//! waits; only that stream waits, the link and every other stream go on. A
//! receiver that holds more than [`STREAM_WINDOW`] of a stream's unreturned
//! credit knows its peer broke the rule and ends that stream.
//!
//! So a receiver never holds more than `STREAM_WINDOW` per stream, and never
//! more than `STREAM_WINDOW / MESSAGE_COST` messages of one.
//!
//! # HTTP bodies (v4, [`Capabilities::HTTP_FLOW_CONTROL`](crate::Capabilities::HTTP_FLOW_CONTROL))
//! A taken HTTP request is a stream of its own with the same rules: from
//! `Request` on, the server has [`STREAM_WINDOW`] credit for its
//! `RequestBody` messages and the client as much for its `ResponseBody`
//! messages (each costs [`credit_cost`] of its chunk, an empty one too; heads
//! and failures cost nothing). The client returns credit with
//! `RequestCredit` once the app has taken the chunks, the server with
//! `ResponseCredit` once the chunks are on their way to the peer. Only that
//! request waits when its reader stalls; nothing gives it up for being slow.

/// Credit each side has per stream and direction when the stream opens.
pub const STREAM_WINDOW: u32 = 512 * 1024;

/// What each data message costs on top of its bytes, so that many tiny
/// messages are bounded too.
pub const MESSAGE_COST: u32 = 64;

/// Credit is returned once at least this much is owed (or the stream ends).
/// Below the window, so a sender whose receiver has caught up always has
/// credit left: `STREAM_WINDOW - CREDIT_BATCH` at least.
pub const CREDIT_BATCH: u32 = STREAM_WINDOW / 4;

/// The credit a data message of `len` bytes consumes.
pub const fn credit_cost(len: usize) -> u32 {
    // `len` is at most one frame (16 MiB), far below u32::MAX.
    len as u32 + MESSAGE_COST
}

/// Most data messages of one stream a receiver can hold at once.
pub const MAX_MESSAGES_IN_WINDOW: usize = (STREAM_WINDOW / MESSAGE_COST) as usize;
