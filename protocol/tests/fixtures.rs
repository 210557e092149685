//! Golden fixtures: every socket message and command of the contract, one JSON file each under
//! `tests/fixtures/`, parsed into the protocol types and written back unchanged. The server's
//! and the SDK's tests read the same files.

use std::fs;
use std::path::{Path, PathBuf};

use livevote_protocol::{ClientCommand, ServerMessage};
use serde_json::Value;

fn fixture_files(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn every_server_message_round_trips_exactly() {
    let mut seen_types = std::collections::BTreeSet::new();
    for path in fixture_files("server") {
        let original = read_json(&path);
        let messages: Vec<Value> = match &original {
            Value::Array(items) => items.clone(),
            single => vec![single.clone()],
        };
        for message in messages {
            let parsed: ServerMessage = serde_json::from_value(message.clone())
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            let written = serde_json::to_value(&parsed).unwrap();
            assert_eq!(written, message, "{} does not round-trip", path.display());
            seen_types.insert(message["type"].as_str().unwrap().to_owned());
        }
    }
    let expected = [
        "BALANCE_UPDATED",
        "EVENT_CLOSED",
        "EVENT_CREATED",
        "EVENT_UPDATED",
        "PING",
        "SUBSCRIBED",
        "SYSTEM_NOTICE",
        "UNSUBSCRIBED",
    ];
    assert_eq!(seen_types.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn every_client_command_round_trips_exactly() {
    let mut seen_actions = std::collections::BTreeSet::new();
    for path in fixture_files("client") {
        let original = read_json(&path);
        let parsed: ClientCommand = serde_json::from_value(original.clone())
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            original,
            "{}",
            path.display()
        );
        seen_actions.insert(original["action"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen_actions.into_iter().collect::<Vec<_>>(),
        ["pong", "refresh", "subscribe", "unsubscribe"]
    );
}

#[test]
fn the_seed_examples_parse() {
    for path in fixture_files("seed") {
        let original = read_json(&path);
        let parsed = if original.get("action").is_some() {
            serde_json::from_value::<ClientCommand>(original).map(|_| ())
        } else {
            serde_json::from_value::<ServerMessage>(original).map(|_| ())
        };
        parsed.unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    }
}

#[test]
fn unknown_command_fields_are_ignored_and_unknown_actions_refused() {
    let command: ClientCommand =
        serde_json::from_str(r#"{"action":"pong","extra":{"nested":true}}"#).unwrap();
    assert_eq!(command, ClientCommand::Pong);
    assert!(serde_json::from_str::<ClientCommand>(r#"{"action":"dance"}"#).is_err());
    assert!(serde_json::from_str::<ClientCommand>(r#"{"action":"subscribe"}"#).is_err());
}
