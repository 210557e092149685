//! Installing the tools the tests need (being built).
