//! livevote build system (being built).
fn main() {}
