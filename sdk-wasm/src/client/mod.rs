//! The client the `livevote` package wraps (npm/src/core.js): the page's calls, and the host's
//! reports of what happened (socket events, timers, tokens, HTTP answers).
//!
//! Every decision is taken in [`connection`]. The package's JavaScript is the [`host::Host`]:
//! it carries them out and reports back through the methods exported here, with no Rust
//! closure or future on the JavaScript side.
//!
//! All state lives in one [`Connection`] behind a `RefCell`. Every way in goes through
//! [`Client::enter`], which borrows the state, lets it record what changed in an outbox,
//! releases it, and only then hands the changes to the page's listeners (`Host::emit`): a
//! listener may call back into the client (even `close()`) safely.

mod channels;
mod connection;
mod host;
mod objects;
mod work;

use std::cell::{Cell, RefCell, RefMut};

use uuid::Uuid;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::decode;
use crate::js::{self, get};
use crate::policy::Backoff;
use channels::Channels;
use connection::{Connection, Settings};
use host::{now, Host};
use work::{SocketEvent, SocketReport, Wake, Work};

/// The contract's default server heartbeat and pong timeout, used when the page does not say.
const DEFAULT_HEARTBEAT_MS: f64 = 20_000.0;
const DEFAULT_PONG_TIMEOUT_MS: f64 = 10_000.0;

#[wasm_bindgen]
pub struct Client {
    host: Host,
    inner: RefCell<Connection>,
    /// Work that arrived while the state was borrowed (a host call that called straight back
    /// in); it runs as soon as the work in progress is done.
    later: Cell<Vec<Work>>,
}

impl Client {
    /// Runs `work` on the state, then hands what it changed to the listeners.
    fn enter(&self, work: Work) {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            let mut later = self.later.take();
            later.push(work);
            self.later.set(later);
            return;
        };
        inner.run(work);
        while let Some(work) = self.next_later() {
            inner.run(work);
        }
        let calls = inner.take_calls();
        drop(inner);
        if let Some(calls) = calls {
            self.host.emit(&calls);
        }
    }

    fn next_later(&self) -> Option<Work> {
        let mut later = self.later.take();
        let next = (!later.is_empty()).then(|| later.remove(0));
        self.later.set(later);
        next
    }

    /// The state, for the page's reads. Only a page calling back in from inside the client
    /// (from a WebSocket constructor, say) finds it borrowed: that throws rather than panics, so
    /// no panic message formatting is linked for it.
    fn state(&self) -> RefMut<'_, Connection> {
        self.inner.try_borrow_mut().unwrap_or_else(|_| {
            wasm_bindgen::throw_str("livevote: the client was called from inside itself")
        })
    }
}

/// A number option: `None` when absent, NaN (refused by the checks) when not a number.
fn number_option(options: &JsValue, key: &str) -> Option<f64> {
    let value = get(options, key);
    (!value.is_undefined()).then(|| value.as_f64().unwrap_or(f64::NAN))
}

#[wasm_bindgen]
impl Client {
    /// Reads the options the package prepared (`token`, `getToken`, `channels`,
    /// `heartbeatIntervalMs`, `pongTimeoutMs`, `reconnect`); throws an `INVALID_OPTIONS`
    /// `LivevoteError` for a bad `reconnect`. Nothing connects until `start()`.
    #[wasm_bindgen(constructor)]
    pub fn new(host: Host, options: JsValue) -> Result<Client, JsValue> {
        let number = |key: &str, default: f64| {
            get(&options, key)
                .as_f64()
                .filter(|value| *value > 0.0)
                .unwrap_or(default)
        };
        let reconnect = get(&options, "reconnect");
        let backoff = Backoff::new(
            number_option(&reconnect, "minDelayMs"),
            number_option(&reconnect, "maxDelayMs"),
            number_option(&reconnect, "jitter"),
        )
        .map_err(|invalid| host.error("INVALID_OPTIONS", invalid.message(), None))?;
        let settings = Settings {
            has_get_token: get(&options, "getToken").is_function(),
            token: get(&options, "token")
                .as_string()
                .filter(|token| !token.is_empty()),
            channels: Channels::new(js::strings(&get(&options, "channels"))),
            liveness_deadline_ms: number("heartbeatIntervalMs", DEFAULT_HEARTBEAT_MS)
                + number("pongTimeoutMs", DEFAULT_PONG_TIMEOUT_MS),
            backoff,
        };
        Ok(Client {
            inner: RefCell::new(Connection::new(host.clone().unchecked_into(), settings)),
            host,
            later: Cell::new(Vec::new()),
        })
    }

    /// Connects (once; later calls do nothing).
    pub fn start(&self) {
        self.enter(Work::Start);
    }

    /// The immutable snapshot: the same object until something changes.
    pub fn snapshot(&self) -> JsValue {
        self.state().snapshot()
    }

    pub fn subscribe(&self, channels: JsValue) {
        let names = js::strings(&channels);
        self.enter(Work::Subscribe(names));
    }

    pub fn unsubscribe(&self, channels: JsValue) {
        let names = js::strings(&channels);
        self.enter(Work::Unsubscribe(names));
    }

    /// Server time now, in milliseconds since the Unix epoch (local time corrected by the offset
    /// estimated from PINGs).
    #[wasm_bindgen(js_name = serverNow)]
    pub fn server_now(&self) -> f64 {
        now() + self.state().clock.offset_ms()
    }

    /// Milliseconds until an event (an id or a state object) closes by the server's clock;
    /// 0 once closed or past due, `NaN` for an unknown id.
    #[wasm_bindgen(js_name = remainingMs)]
    pub fn remaining_ms(&self, event: JsValue) -> f64 {
        let event = match event.as_string().map(|id| Uuid::try_parse(&id)) {
            Some(Ok(id)) => self.state().event_object(id).unwrap_or(JsValue::UNDEFINED),
            Some(Err(_)) => JsValue::UNDEFINED,
            None => event,
        };
        if !event.is_object() {
            return f64::NAN;
        }
        if get(&event, "status").as_string().as_deref() == Some("closed") {
            return 0.0;
        }
        let closes_at = get(&event, "closesAt").as_string().unwrap_or_default();
        (js_sys::Date::parse(&closes_at) - self.server_now()).max(0.0)
    }

    /// Stops: closes the socket with 1000 and leaves no timer, socket or page listener behind.
    pub fn close(&self) {
        self.enter(Work::Close);
    }

    /// Reopens a closed client (it resubscribes every channel), or skips the wait of one
    /// reconnecting; does nothing while connecting or live.
    pub fn reconnect(&self) {
        self.enter(Work::Reconnect);
    }

    /// The host's report about the socket of `generation`: `report` is a `SocketReport`
    /// number; `value` is the frame's `JSON.parse`d content (`undefined` when it was not JSON
    /// text) for a message, the close code for a close.
    pub fn socket(&self, generation: u32, report: u32, value: JsValue) {
        let event = match SocketReport::from_number(report) {
            Some(SocketReport::Opened) => SocketEvent::Opened,
            Some(SocketReport::Message) => SocketEvent::Message(value),
            Some(SocketReport::Closed) => SocketEvent::Closed(value.as_f64().unwrap_or(0.0) as u16),
            None => return,
        };
        self.enter(Work::Socket(generation, event));
    }

    /// A timer or a page event: `wake` is a `Wake` number
    /// (both in client/work.rs).
    pub fn wake(&self, wake: u32) {
        if let Some(wake) = Wake::from_number(wake) {
            self.enter(Work::Wake(wake));
        }
    }

    /// What `getToken()` gave (`undefined` when it threw, rejected or gave no non-empty string).
    #[wasm_bindgen(js_name = tokenArrived)]
    pub fn token_arrived(&self, token: Option<String>) {
        self.enter(Work::Token(token));
    }

    /// `GET /api/events/{id}` answered `status` (0 when no answer came) with a parsed `body`.
    pub fn verified(&self, id: &str, status: u16, body: JsValue) {
        if let Ok(id) = Uuid::try_parse(id) {
            self.enter(Work::Verified(id, status, body));
        }
    }

    /// The token the client holds now (for `vote()`).
    pub fn token(&self) -> Option<String> {
        self.state().token.clone()
    }

    /// A successful `POST /api/events/{id}/votes` answered `body`; `token` is the one
    /// `getToken()` gave for it, if it asked. Records the balance and freezes `body`; false
    /// when `body` is not a vote answer.
    pub fn voted(&self, body: JsValue, token: Option<String>) -> bool {
        let Some(response) = decode::vote_response(&body) else {
            return false;
        };
        self.enter(Work::Voted(response.balance, token));
        self.host.freeze(&body);
        true
    }
}
