//! The ways into the client, one [`Work`] at a time: the page's calls and the host's reports,
//! with the numbers that cross the boundary named ([`SocketReport`], [`Wake`]).

use uuid::Uuid;
use wasm_bindgen::JsValue;

/// What the host reports about the socket of one generation, numbered as `SOCKET_*` in
/// npm/src/core.js (the number crosses the boundary; the value comes beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketReport {
    Opened = 0,
    Message = 1,
    Closed = 2,
}

impl SocketReport {
    pub fn from_number(number: u32) -> Option<SocketReport> {
        [
            SocketReport::Opened,
            SocketReport::Message,
            SocketReport::Closed,
        ]
        .into_iter()
        .find(|report| *report as u32 == number)
    }
}

/// A [`SocketReport`] with what came with it.
pub enum SocketEvent {
    Opened,
    /// A frame, already `JSON.parse`d (`undefined` when it was not JSON text).
    Message(JsValue),
    Closed(u16),
}

/// Which timer (or page event) woke the client, numbered as `WAKE_*` in npm/src/core.js.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The liveness tick, or the page coming back (`online`, `focus`, `visibilitychange`).
    Check = 0,
    /// The reconnect timer: open the next socket.
    RetryTimer = 1,
}

impl Wake {
    pub fn from_number(number: u32) -> Option<Wake> {
        [Wake::Check, Wake::RetryTimer]
            .into_iter()
            .find(|wake| *wake as u32 == number)
    }
}

/// One way into the client: a call from the page or a report from the host.
pub enum Work {
    Start,
    Close,
    /// The page's `reconnect()`: reopen a closed client, or skip the backoff wait.
    Reconnect,
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Socket(u32, SocketEvent),
    Wake(Wake),
    Token(Option<String>),
    Verified(Uuid, u16, JsValue),
    /// A vote's answer: the balance, and the token `getToken()` gave for it.
    Voted(i64, Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The package's JavaScript names these numbers; both sides must agree.
    const CORE_JS: &str = include_str!("../../../npm/src/core.js");

    fn js_constant(name: &str) -> u32 {
        let line = CORE_JS
            .lines()
            .find_map(|line| line.strip_prefix(&format!("const {name} = ")))
            .unwrap_or_else(|| panic!("npm/src/core.js defines {name}"));
        line.trim_end_matches(';').parse().expect("a number")
    }

    #[test]
    fn the_numbers_match_core_js() {
        for (name, report) in [
            ("SOCKET_OPENED", SocketReport::Opened),
            ("SOCKET_MESSAGE", SocketReport::Message),
            ("SOCKET_CLOSED", SocketReport::Closed),
        ] {
            assert_eq!(SocketReport::from_number(js_constant(name)), Some(report));
        }
        for (name, wake) in [
            ("WAKE_CHECK", Wake::Check),
            ("WAKE_RETRY_TIMER", Wake::RetryTimer),
        ] {
            assert_eq!(Wake::from_number(js_constant(name)), Some(wake));
        }
        assert_eq!(SocketReport::from_number(3), None);
        assert_eq!(Wake::from_number(2), None);
    }
}
