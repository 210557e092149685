//! Shared by the SDK's test files: `fixture!(folder, name)`, one of the protocol's golden JSON
//! fixtures as text, read at compile time so the same files serve native and browser tests.

macro_rules! fixture {
    ($folder:literal, $name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../protocol/tests/fixtures/",
            $folder,
            "/",
            $name,
            ".json"
        ))
    };
}
