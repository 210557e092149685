//! Per-user vote rate limits (governor, keyed by user id).
