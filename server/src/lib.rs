//! livevote-server as a library: build the state with [`state::AppState`], the router with
//! [`app`], and serve a bound listener with [`run`]. `main.rs` is a thin wrapper.

pub mod auth;
pub mod broker;
pub mod config;
