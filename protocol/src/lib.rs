//! livevote's wire format: every socket message, command, channel name and HTTP body of the
//! public contract, as plain serde types shared by the server, the SDK and the load generator.
//!
//! This crate knows no runtime and no clock: timestamps travel as ISO-8601 strings
//! ([`Timestamp`]) so that the wasm SDK never links a date library or float formatting.

#![warn(missing_docs)]

mod api;
mod channel;
mod messages;

pub use api::*;
pub use channel::{Channel, ChannelError, ChannelKind};
pub use messages::*;

/// Most channels one socket may hold at once, its `?streamerId` channel included.
pub const MAX_CHANNELS_PER_SOCKET: usize = 100;
/// Largest text frame a client may send, in bytes; larger ones are closed with 1009.
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024;
/// Largest HTTP request body, in bytes; larger ones are answered 413.
pub const MAX_HTTP_BODY_BYTES: usize = 65_536;
