//! livevote-server binary (being built).
fn main() {}
