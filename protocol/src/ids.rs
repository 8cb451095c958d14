//! Identity newtypes: whose id or handle a number is, so they never get mixed up.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:x}", self.0)
            }
        }
    };
}

id_type!(
    /// Matches a reply to its request on one link. Chosen by the requester.
    RequestId
);
id_type!(
    /// One TCP/UDP/unix stream multiplexed on a client link. Outgoing streams
    /// are numbered by the client, incoming ones by the agent; the two travel
    /// in different message groups so the numbers never collide.
    ConnectionId
);
id_type!(
    /// One remora session (one `remora run`) as seen by the agent or operator.
    SessionId
);
id_type!(
    /// A file or directory handle opened in the target on the client's behalf.
    RemoteFd
);
id_type!(
    /// One HTTP request delivered through a filtered steal.
    HttpRequestId
);
