//! livevote's browser client, compiled to wasm and published as the `livevote` npm package.
//!
//! The package's JavaScript wraps [`Client`]; everything that decides something lives here:
//! the socket and its reconnect policy ([`policy`]), the merge of server messages into state
//! ([`state`]), the server clock ([`clock`]). Those three are plain Rust, tested natively
//! (`cargo test -p livevote-sdk`, tests/merge.rs) against the protocol's golden fixtures; the
//! rest talks to JavaScript, and its decoder is tested in headless Chromium (tests/decode.rs).
//! The JavaScript side only carries out what the client decides (constructs the socket, arms
//! timers, calls `getToken()`, fetches) and reports back, so the wasm holds no closures and no
//! futures. JSON is parsed by the
//! JavaScript engine (`JSON.parse`) and read into the protocol's serde types by [`decode`], so
//! the wasm carries no JSON parser and no number formatting.

mod client;
pub mod clock;
pub mod decode;
mod js;
pub mod policy;
pub mod state;
mod view;

pub use client::Client;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());
