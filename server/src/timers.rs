//! Event close timers (being built).
