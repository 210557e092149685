//! livevote hub (being built).
