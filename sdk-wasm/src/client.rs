//! The connection and everything that keeps it honest: one socket at a time, auto-pong,
//! wall-clock liveness, reconnect by the close-code table, resubscribe, stale-while-resync,
//! in-band token refresh, the server clock and the immutable snapshot.
//!
//! Every decision is taken here. The package's JavaScript (`npm/src/core.js`) is the [`Host`]:
//! it carries them out (constructs the socket, arms a timer, calls `getToken()`, fetches) and
//! reports back through the exported methods (`socket`, `wake`, `tokenArrived`, `verified`),
//! with no Rust closure or future on the JavaScript side.
//!
//! All state lives in one `Inner` behind a `RefCell`. Every way in goes through
//! [`Client::enter`], which borrows the state, lets it record what changed in an outbox,
//! releases it, and only then hands the changes to the page's listeners (`Host::emit`): a
//! listener may call back into the client (even `close()`) safely.

use std::cell::{Cell, RefCell, RefMut};

use js_sys::{Array, Object};
use livevote_protocol::{close_codes, notice_codes, Channel, ServerMessage};
use uuid::Uuid;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::clock::ClockOffset;
use crate::decode;
use crate::js::{self, get, set};
use crate::policy::{self, CloseAction};
use crate::state::{Change, EventState, Store};
use crate::view;

#[wasm_bindgen]
extern "C" {
    /// What the package's JavaScript does on the client's behalf (`host` in npm/src/core.js).
    pub type Host;

    /// Constructs the WebSocket for `token` and wires its events to `Client::socket` with
    /// `generation`; throws when the constructor does.
    #[wasm_bindgen(method, catch)]
    fn open(this: &Host, token: &str, generation: u32) -> Result<JsValue, JsValue>;
    /// Unhooks a socket's handlers and closes it with 1000 if it is still open or opening.
    #[wasm_bindgen(method)]
    fn retire(this: &Host, socket: &JsValue);
    /// Sends `{action, channels: value}` (or `{action, token: value}` for `refresh`).
    #[wasm_bindgen(method)]
    fn send(this: &Host, socket: &JsValue, action: &str, value: &JsValue);
    /// `setInterval(() => client.wake(0), ms)`.
    #[wasm_bindgen(method)]
    fn every(this: &Host, ms: u32) -> JsValue;
    /// `setTimeout(() => client.wake(1), ms)`.
    #[wasm_bindgen(method)]
    fn after(this: &Host, ms: u32) -> JsValue;
    /// Adds (or removes) the `online`, `focus` and `visibilitychange` listeners calling
    /// `client.wake(0)`.
    #[wasm_bindgen(method)]
    fn page(this: &Host, listen: bool);
    /// Calls `getToken()` in a later task and hands its answer to `Client::token_arrived`.
    #[wasm_bindgen(method, js_name = getToken)]
    fn get_token(this: &Host);
    /// `GET /api/events/{id}`, answered through `Client::verified`.
    #[wasm_bindgen(method, js_name = fetchEvent)]
    fn fetch_event(this: &Host, id: &str, token: Option<&str>);
    /// A `LivevoteError`.
    #[wasm_bindgen(method)]
    fn error(this: &Host, code: &str, message: &str, close_code: Option<u16>) -> JsValue;
    /// Freezes an object and everything inside it.
    #[wasm_bindgen(method)]
    fn freeze(this: &Host, value: &JsValue);
    /// Calls the listeners: `batch` is `[topic, argument, topic, argument...]` (topics numbered
    /// as [`Topic`]).
    #[wasm_bindgen(method)]
    fn emit(this: &Host, batch: &Array);

    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_name = clearInterval)]
    fn clear_interval(handle: &JsValue);
}

/// The contract's default server heartbeat and pong timeout, used when the page does not say.
const DEFAULT_HEARTBEAT_MS: f64 = 20_000.0;
const DEFAULT_PONG_TIMEOUT_MS: f64 = 10_000.0;
/// Tries to learn an event's final state over HTTP before waiting for the next reconnect.
const MAX_VERIFY_ATTEMPTS: u32 = 5;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A socket is opening, or open and waiting for its channels' snapshots.
    Connecting,
    /// Open, and every channel has been answered: the state is current.
    Live,
    /// Between sockets: waiting for the backoff timer or a new token.
    Reconnecting,
    /// Stopped for good, by `close()` or by the server (1000, 4003, a second 4001...).
    Closed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Live => "live",
            Phase::Reconnecting => "reconnecting",
            Phase::Closed => "closed",
        }
    }
}

/// What the server said about one channel on the current socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Pending,
    Subscribed,
    Denied,
}

impl ChannelState {
    fn name(self) -> &'static str {
        match self {
            ChannelState::Pending => "pending",
            ChannelState::Subscribed => "subscribed",
            ChannelState::Denied => "denied",
        }
    }
}

/// What the page can listen to, numbered as `TOPICS` in npm/src/core.js.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    Event = 0,
    Remove = 1,
    Balance = 2,
    Notice = 3,
    Status = 4,
    /// The store: called without argument whenever the snapshot changed.
    Store = 5,
}

/// A timer armed by the host; dropping it clears it.
struct Timer {
    handle: JsValue,
    repeating: bool,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.repeating {
            clear_interval(&self.handle);
        } else {
            clear_timeout(&self.handle);
        }
    }
}

/// One live socket. Retiring it (`Host::retire`) unhooks its handlers, so a superseded socket
/// is mute for good; `generation` catches a frame already queued when that happened.
struct Socket {
    web_socket: JsValue,
    generation: u32,
    opened_at: Option<f64>,
    /// What the server's SERVER_RESTARTING notice on this socket asked for.
    retry_after_ms: Option<f64>,
    /// The channels of each subscribe command sent on this socket and not yet answered. The
    /// server answers every subscribe command, in order, with one SUBSCRIBED (after the
    /// denials), so a channel of the answered command that is neither listed nor denied by then
    /// will never be answered: it counts as denied rather than pending forever.
    unanswered: Vec<Vec<String>>,
}

/// Changes recorded while the state is borrowed, delivered to listeners after it is released.
#[derive(Default)]
struct Outbox {
    events: Vec<Uuid>,
    removed: Vec<Uuid>,
    balance: bool,
    notices: Vec<JsValue>,
    status: bool,
    /// Something in the snapshot changed (channels, staleness...) besides the above.
    snapshot: bool,
}

impl Outbox {
    fn event(&mut self, id: Uuid) {
        if !self.events.contains(&id) {
            self.events.push(id);
        }
    }

    fn touches_snapshot(&self) -> bool {
        !self.events.is_empty()
            || !self.removed.is_empty()
            || self.balance
            || self.status
            || self.snapshot
    }
}

/// An event whose final state is to be fetched over HTTP.
struct Unverified {
    id: Uuid,
    attempts: u32,
    next_at: f64,
    in_flight: bool,
}

struct Inner {
    host: Host,
    // Configuration.
    has_get_token: bool,
    liveness_deadline_ms: f64,
    tick_ms: u32,
    // Connection.
    started: bool,
    listening_to_page: bool,
    phase: Phase,
    token: Option<String>,
    socket: Option<Socket>,
    generation: u32,
    last_frame_at: f64,
    tick: Option<Timer>,
    retry_timer: Option<Timer>,
    retry_at: f64,
    attempt: u32,
    close_code: Option<u16>,
    error: JsValue,
    /// A 4001 already led to one new token since the last healthy socket.
    unauthorized_retry_used: bool,
    token_request_in_flight: bool,
    connect_when_token_arrives: bool,
    // State.
    channels: Vec<(String, ChannelState)>,
    store: Store,
    /// The fresh snapshot a new socket builds while the old state stays visible.
    aside: Option<Store>,
    stale: bool,
    unverified: Vec<Unverified>,
    clock: ClockOffset,
    // What changed, and the JavaScript objects handed out (kept so unchanged parts keep their
    // identity).
    outbox: Outbox,
    event_objects: Vec<(Uuid, JsValue)>,
    snapshot_object: Option<JsValue>,
    status_object: Option<JsValue>,
}

fn now() -> f64 {
    js_sys::Date::now()
}

/// The server's spelling of a channel name (lower-case hyphenated uuid), so that a name the page
/// wrote differently still matches SUBSCRIBED; a malformed name stays as written (the server
/// denies it by that name). Built without `Display`, which would link `core::fmt` machinery.
fn canonical_channel(name: &str) -> String {
    match name.parse::<Channel>() {
        Ok(channel) => {
            let mut canonical = String::from(channel.kind.prefix());
            canonical.push(':');
            canonical.push_str(
                channel
                    .id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()),
            );
            canonical
        }
        Err(_) => name.to_owned(),
    }
}

impl Inner {
    fn error(&self, code: &str, message: &str, close_code: Option<u16>) -> JsValue {
        self.host.error(code, message, close_code)
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.outbox.status = true;
        }
    }

    fn is_current(&self, generation: u32) -> bool {
        self.socket
            .as_ref()
            .is_some_and(|socket| socket.generation == generation)
    }

    /// Sends a command on the current socket once it is open (`value` is the channel list, the
    /// token, or `undefined`); false when there is no open socket. Before it opens nothing is
    /// sent: on_open subscribes every channel.
    fn send(&self, action: &str, value: &JsValue) -> bool {
        match &self.socket {
            Some(socket) if socket.opened_at.is_some() => {
                self.host.send(&socket.web_socket, action, value);
                true
            }
            _ => false,
        }
    }

    /// Sends `subscribe`/`unsubscribe` for `channels`.
    fn send_channels(&mut self, action: &str, channels: Vec<String>) {
        let names: Array = channels
            .iter()
            .map(|name| JsValue::from_str(name))
            .collect();
        if self.send(action, &names) && action == "subscribe" {
            if let Some(socket) = &mut self.socket {
                socket.unanswered.push(channels);
            }
        }
    }

    // ----- Starting and opening sockets -----

    fn start(&mut self) {
        if std::mem::replace(&mut self.started, true) || self.phase == Phase::Closed {
            return;
        }
        self.listening_to_page = true;
        self.host.page(true);
        self.open_socket();
    }

    /// Opens the next socket, first fetching a token when there is none.
    fn open_socket(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.retry_timer = None;
        let Some(token) = self.token.clone() else {
            self.set_phase(if self.generation == 0 {
                Phase::Connecting
            } else {
                Phase::Reconnecting
            });
            self.connect_when_token_arrives = true;
            self.request_token();
            return;
        };
        self.retire_socket();
        self.generation = self.generation.wrapping_add(1);
        let Ok(web_socket) = self.host.open(&token, self.generation) else {
            self.schedule_retry(CloseAction::Reconnect, None);
            return;
        };
        self.socket = Some(Socket {
            web_socket,
            generation: self.generation,
            opened_at: None,
            retry_after_ms: None,
            unanswered: Vec::new(),
        });
        // A socket that never opens is caught by the same wall-clock deadline as a silent one.
        self.last_frame_at = now();
        self.set_phase(Phase::Connecting);
        if self.tick.is_none() {
            self.tick = Some(Timer {
                handle: self.host.every(self.tick_ms),
                repeating: true,
            });
        }
    }

    fn retire_socket(&mut self) {
        if let Some(socket) = self.socket.take() {
            self.host.retire(&socket.web_socket);
        }
    }

    fn on_open(&mut self, generation: u32) {
        if !self.is_current(generation) {
            return;
        }
        let opened_at = now();
        self.last_frame_at = opened_at;
        if let Some(socket) = &mut self.socket {
            socket.opened_at = Some(opened_at);
        }
        // Whatever the page saw so far stays visible while the new socket's snapshot is built
        // aside; an empty state has nothing to protect and fills directly.
        if !self.store.is_empty() {
            self.aside = Some(Store::default());
        }
        let names: Vec<String> = self
            .channels
            .iter_mut()
            .map(|(name, state)| {
                *state = ChannelState::Pending;
                name.clone()
            })
            .collect();
        if !names.is_empty() {
            self.send_channels("subscribe", names);
        }
        self.outbox.snapshot = true;
        self.check_resync_done();
    }

    // ----- Messages -----

    /// One frame, already parsed by `JSON.parse` (`undefined` when it was not JSON text).
    fn on_message(&mut self, generation: u32, parsed: JsValue) {
        // A superseded socket's frames are dropped: its handlers are unhooked, and this catches
        // a frame already queued when that happened.
        if !self.is_current(generation) {
            return;
        }
        self.last_frame_at = now();
        if parsed.is_undefined() {
            return;
        }
        if let Some(batch) = js::as_array(&parsed) {
            for item in batch.iter() {
                if !self.is_current(generation) {
                    return;
                }
                self.on_server_message(item);
            }
        } else {
            self.on_server_message(parsed);
        }
        self.outbox.removed.extend(self.store.prune_closed());
    }

    fn on_server_message(&mut self, item: JsValue) {
        // Unknown message types are additive extensions of the contract: ignored.
        let Some(message) = decode::message(&item) else {
            return;
        };
        match message {
            ServerMessage::Ping(ping) => {
                // Answered here, in the message handler: a timer could be throttled in a
                // background tab long enough for the server to give up on us.
                self.send("pong", &JsValue::UNDEFINED);
                self.clock
                    .add_sample(js_sys::Date::parse(ping.ts.as_str()), now());
            }
            ServerMessage::Subscribed(list) => {
                for name in &list.channels {
                    self.set_channel(name, ChannelState::Subscribed);
                }
                let answered = self
                    .socket
                    .as_mut()
                    .filter(|socket| !socket.unanswered.is_empty())
                    .map(|socket| socket.unanswered.remove(0))
                    .unwrap_or_default();
                for name in answered {
                    let still_pending = self
                        .channels
                        .iter()
                        .any(|(known, state)| *known == name && *state == ChannelState::Pending);
                    if still_pending {
                        self.set_channel(&name, ChannelState::Denied);
                    }
                }
                self.check_resync_done();
            }
            ServerMessage::Unsubscribed(_) => {}
            ServerMessage::SystemNotice(notice) => {
                match notice.code.as_str() {
                    notice_codes::SUBSCRIBE_DENIED => {
                        if let Some(name) = &notice.channel {
                            self.set_channel(name, ChannelState::Denied);
                            self.check_resync_done();
                        }
                    }
                    notice_codes::TOKEN_EXPIRING => self.request_token(),
                    notice_codes::SERVER_RESTARTING => {
                        if let Some(socket) = &mut self.socket {
                            socket.retry_after_ms = notice.retry_after_ms.map(|ms| ms as f64);
                        }
                    }
                    _ => {}
                }
                let payload = get(&item, "payload");
                self.host.freeze(&payload);
                self.outbox.notices.push(payload);
            }
            message => match &mut self.aside {
                Some(aside) => {
                    aside.merge(message);
                }
                None => match self.store.merge(message) {
                    Change::Event(id) => self.outbox.event(id),
                    Change::Balance => self.outbox.balance = true,
                    Change::Nothing => {}
                },
            },
        }
    }

    fn set_channel(&mut self, name: &str, state: ChannelState) {
        let name = canonical_channel(name);
        if let Some(entry) = self.channels.iter_mut().find(|(known, _)| *known == name) {
            if entry.1 != state {
                entry.1 = state;
                self.outbox.snapshot = true;
            }
        }
    }

    fn carried_by_channels(&self) -> impl Fn(&EventState) -> bool + '_ {
        |state| {
            self.channels.iter().any(|(name, channel_state)| {
                *channel_state != ChannelState::Denied && state.is_carried_by(name)
            })
        }
    }

    /// Once every channel of the socket is answered: swap in the fresh snapshot and go live.
    fn check_resync_done(&mut self) {
        let open = self
            .socket
            .as_ref()
            .is_some_and(|socket| socket.opened_at.is_some());
        if !open
            || self
                .channels
                .iter()
                .any(|(_, state)| *state == ChannelState::Pending)
        {
            return;
        }
        if let Some(fresh) = self.aside.take() {
            let balance_before = self.store.balance();
            let mut store = std::mem::take(&mut self.store);
            let adoption = store.adopt(fresh, self.carried_by_channels());
            self.store = store;
            for id in adoption.changed {
                self.outbox.event(id);
            }
            self.outbox.removed.extend(adoption.removed);
            self.outbox.balance |= self.store.balance() != balance_before;
            let at = now();
            for id in adoption.to_verify {
                if !self.unverified.iter().any(|entry| entry.id == id) {
                    self.unverified.push(Unverified {
                        id,
                        attempts: 0,
                        next_at: at,
                        in_flight: false,
                    });
                }
            }
        }
        if self.stale {
            self.stale = false;
            self.outbox.snapshot = true;
        }
        self.set_phase(Phase::Live);
        self.verify_missing_events();
    }

    // ----- Liveness and closing -----

    /// The periodic tick and the page's wake-up events: a connection silent for longer than the
    /// heartbeat plus the pong timeout is dead, however long the timers were throttled.
    fn check(&mut self) {
        if self.socket.is_some() {
            if now() - self.last_frame_at > self.liveness_deadline_ms {
                self.lost(policy::LOCAL_TIMEOUT);
            } else {
                self.verify_missing_events();
            }
        } else if self.retry_timer.is_some() && now() >= self.retry_at {
            // The backoff timer should have fired already (the tab slept): go now.
            self.open_socket();
        }
    }

    fn on_close(&mut self, generation: u32, code: u16) {
        if self.is_current(generation) {
            self.lost(code);
        }
    }

    /// The current socket is gone (closed by the server, dropped, or declared dead): decide
    /// by the close-code table.
    fn lost(&mut self, code: u16) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let at = now();
        let healthy = socket
            .opened_at
            .is_some_and(|opened| at - opened >= policy::STABLE_AFTER_MS);
        self.host.retire(&socket.web_socket);
        self.tick = None;
        self.aside = None;
        if healthy {
            self.attempt = 0;
            self.unauthorized_retry_used = false;
        }
        self.close_code = Some(code);
        self.outbox.status = true;
        for (_, state) in &mut self.channels {
            *state = ChannelState::Pending;
        }
        for id in self.store.mark_stale() {
            self.outbox.event(id);
        }
        if !self.store.is_empty() {
            self.stale = true;
        }
        self.outbox.snapshot = true;
        let action = policy::action_for_close(code);
        match action {
            CloseAction::Stop if code == close_codes::FORBIDDEN => {
                let error = self.error(
                    "FORBIDDEN",
                    "the server refused this connection (4003)",
                    Some(code),
                );
                self.stop(error);
            }
            CloseAction::Stop => self.stop(JsValue::NULL),
            CloseAction::RenewTokenOnceThenStop
                if self.has_get_token && !self.unauthorized_retry_used =>
            {
                self.unauthorized_retry_used = true;
                self.token = None;
                self.schedule_retry(action, None);
            }
            CloseAction::RenewTokenOnceThenStop => {
                let error = self.error(
                    "UNAUTHORIZED",
                    "the server refused the token (4001)",
                    Some(code),
                );
                self.stop(error);
            }
            CloseAction::RenewTokenThenReconnect if !self.has_get_token => {
                let error = self.error(
                    "TOKEN_EXPIRED",
                    "the token expired and no getToken() was given to renew it (4002)",
                    Some(code),
                );
                self.stop(error);
            }
            CloseAction::RenewTokenThenReconnect => {
                self.token = None;
                self.schedule_retry(action, None);
            }
            _ => self.schedule_retry(action, socket.retry_after_ms),
        }
    }

    fn schedule_retry(&mut self, action: CloseAction, retry_after_ms: Option<f64>) {
        let delay = policy::reconnect_delay_ms(
            action,
            self.attempt,
            js_sys::Math::random(),
            retry_after_ms,
        );
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = now() + delay;
        self.set_phase(Phase::Reconnecting);
        self.outbox.status = true;
        self.retry_timer = Some(Timer {
            handle: self.host.after(delay as u32),
            repeating: false,
        });
    }

    /// Stops for good: no socket, no timer, no page listener is left behind.
    fn stop(&mut self, error: JsValue) {
        if self.phase == Phase::Closed {
            return;
        }
        self.retire_socket();
        self.tick = None;
        self.retry_timer = None;
        self.aside = None;
        self.connect_when_token_arrives = false;
        if std::mem::take(&mut self.listening_to_page) {
            self.host.page(false);
        }
        self.error = error;
        self.set_phase(Phase::Closed);
    }

    // ----- Tokens -----

    /// Asks `getToken()` for a new token (one request at a time). When it arrives it is sent
    /// in-band (`refresh`) on an open socket, and opens the next socket if one was waiting for it.
    fn request_token(&mut self) {
        if !self.has_get_token {
            if self.connect_when_token_arrives {
                let error = self.error(
                    "UNAUTHORIZED",
                    "no token and no getToken() to obtain one",
                    None,
                );
                self.stop(error);
            }
            return;
        }
        if self.token_request_in_flight {
            return;
        }
        self.token_request_in_flight = true;
        self.host.get_token();
    }

    fn on_token(&mut self, token: Option<String>) {
        self.token_request_in_flight = false;
        if self.phase == Phase::Closed {
            return;
        }
        match token {
            Some(token) => {
                self.send("refresh", &JsValue::from_str(&token));
                self.token = Some(token);
                if std::mem::take(&mut self.connect_when_token_arrives) {
                    self.open_socket();
                }
            }
            None if self.connect_when_token_arrives => {
                if self.close_code == Some(close_codes::UNAUTHORIZED) {
                    let error = self.error(
                        "UNAUTHORIZED",
                        "getToken() failed after the server refused the token (4001)",
                        None,
                    );
                    self.stop(error);
                } else {
                    // The token service may be down too: try again with the usual backoff.
                    self.connect_when_token_arrives = false;
                    self.schedule_retry(CloseAction::Reconnect, None);
                }
            }
            // A failed in-band refresh keeps the old token; when it expires the server closes
            // with 4002 and the next attempt asks again.
            None => {}
        }
    }

    // ----- Events missing from a fresh snapshot -----

    /// Fetches the final state of events that were open before a reconnect and are missing
    /// from the fresh snapshot. Driven by the tick, so it stops with the connection.
    fn verify_missing_events(&mut self) {
        let at = now();
        for entry in &mut self.unverified {
            if entry.in_flight || entry.next_at > at {
                continue;
            }
            entry.in_flight = true;
            entry.attempts += 1;
            self.host.fetch_event(
                entry
                    .id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()),
                self.token.as_deref(),
            );
        }
    }

    /// `GET /api/events/{id}` answered `status` (0: no answer) with `body`.
    fn on_verified(&mut self, id: Uuid, status: u16, body: JsValue) {
        let Some(position) = self.unverified.iter().position(|entry| entry.id == id) else {
            return;
        };
        let view = if (200..300).contains(&status) {
            decode::event_view(&body)
        } else {
            None
        };
        let Some(entry) = self.unverified.get_mut(position) else {
            return;
        };
        entry.in_flight = false;
        if let Some(view) = view {
            self.unverified.remove(position);
            if let Change::Event(id) = self.store.merge_view(view) {
                self.outbox.event(id);
            }
        } else if status == 404 {
            self.unverified.remove(position);
            if self.store.remove(id) {
                self.outbox.removed.push(id);
            }
        } else if entry.attempts >= MAX_VERIFY_ATTEMPTS {
            // Give up until the next reconnect lists it again; the state stays marked stale.
            self.unverified.remove(position);
        } else {
            entry.next_at = now() + policy::backoff_ms(entry.attempts, 1.0);
            if status == 401 {
                self.request_token();
            }
        }
    }

    // ----- Channels -----

    fn subscribe(&mut self, names: Vec<String>) {
        let mut added = Vec::new();
        for name in names {
            let name = canonical_channel(&name);
            match self.channels.iter_mut().find(|(known, _)| *known == name) {
                // Asking again for a denied channel retries it (a new token may allow it).
                Some(entry) if entry.1 == ChannelState::Denied => entry.1 = ChannelState::Pending,
                Some(_) => continue,
                None => self.channels.push((name.clone(), ChannelState::Pending)),
            }
            added.push(name);
        }
        if added.is_empty() {
            return;
        }
        self.outbox.snapshot = true;
        self.send_channels("subscribe", added);
    }

    fn unsubscribe(&mut self, names: Vec<String>) {
        let names: Vec<String> = names.iter().map(|name| canonical_channel(name)).collect();
        let before = self.channels.len();
        self.channels.retain(|(known, _)| !names.contains(known));
        if self.channels.len() == before {
            return;
        }
        self.outbox.snapshot = true;
        self.send_channels("unsubscribe", names);
        let mut store = std::mem::take(&mut self.store);
        let removed = store.retain_carried(self.carried_by_channels());
        self.store = store;
        if let Some(mut aside) = self.aside.take() {
            aside.retain_carried(self.carried_by_channels());
            self.aside = Some(aside);
        }
        self.outbox.removed.extend(removed);
        self.check_resync_done();
    }

    // ----- JavaScript views -----

    fn event_object(&mut self, id: Uuid) -> Option<JsValue> {
        if let Some((_, object)) = self.event_objects.iter().find(|(known, _)| *known == id) {
            return Some(object.clone());
        }
        let state = self.store.get(id)?;
        let object = view::event_state(state);
        self.host.freeze(&object);
        self.event_objects.push((id, object.clone()));
        Some(object)
    }

    fn events_array(&mut self) -> Array {
        let ids: Vec<Uuid> = self
            .store
            .events()
            .iter()
            .map(|state| state.event.id)
            .collect();
        let array = Array::new();
        for id in ids {
            if let Some(object) = self.event_object(id) {
                array.push(&object);
            }
        }
        array
    }

    fn balance_value(&self) -> JsValue {
        self.store
            .balance()
            .map_or(JsValue::NULL, |balance| JsValue::from_f64(balance as f64))
    }

    fn status_object(&mut self) -> JsValue {
        if let Some(object) = &self.status_object {
            return object.clone();
        }
        let object = Object::new();
        set(&object, "state", &self.phase.name().into());
        set(&object, "attempt", &self.attempt.into());
        let retry_at = if self.phase == Phase::Reconnecting && self.retry_timer.is_some() {
            JsValue::from_f64(self.retry_at)
        } else {
            JsValue::NULL
        };
        set(&object, "retryAt", &retry_at);
        set(
            &object,
            "closeCode",
            &self.close_code.map_or(JsValue::NULL, JsValue::from),
        );
        set(&object, "error", &self.error);
        // Shallow: the error stays the page's to use.
        Object::freeze(&object);
        let object: JsValue = object.into();
        self.status_object = Some(object.clone());
        object
    }

    fn channels_object(&self) -> JsValue {
        let object = Object::new();
        for (name, state) in &self.channels {
            set(&object, name, &state.name().into());
        }
        Object::freeze(&object);
        object.into()
    }

    fn snapshot(&mut self) -> JsValue {
        if let Some(snapshot) = &self.snapshot_object {
            return snapshot.clone();
        }
        let object = Object::new();
        set(&object, "status", &self.status_object());
        set(&object, "stale", &self.stale.into());
        let events = self.events_array();
        Object::freeze(&events);
        set(&object, "events", &events);
        set(&object, "balance", &self.balance_value());
        set(&object, "channels", &self.channels_object());
        Object::freeze(&object);
        let object: JsValue = object.into();
        self.snapshot_object = Some(object.clone());
        object
    }

    /// Turns the outbox into listener calls (`[topic, argument, ...]`), refreshing the cached
    /// objects they receive; `None` when nothing changed.
    fn take_calls(&mut self) -> Option<Array> {
        let outbox = std::mem::take(&mut self.outbox);
        let touched = outbox.touches_snapshot();
        if !touched && outbox.notices.is_empty() {
            return None;
        }
        if touched {
            self.snapshot_object = None;
        }
        if outbox.status {
            self.status_object = None;
        }
        self.event_objects
            .retain(|(id, _)| !outbox.events.contains(id) && !outbox.removed.contains(id));
        let calls = Array::new();
        let push = |topic: Topic, argument: &JsValue| {
            calls.push(&JsValue::from(topic as u32));
            calls.push(argument);
        };
        for id in &outbox.events {
            if let Some(object) = self.event_object(*id) {
                push(Topic::Event, &object);
            }
        }
        for id in &outbox.removed {
            push(Topic::Remove, &view::uuid_text(id));
        }
        if outbox.balance {
            push(Topic::Balance, &self.balance_value());
        }
        for notice in &outbox.notices {
            push(Topic::Notice, notice);
        }
        if outbox.status {
            push(Topic::Status, &self.status_object());
        }
        if touched {
            push(Topic::Store, &JsValue::UNDEFINED);
        }
        Some(calls)
    }
}

/// One way into the client: a call from the page or a report from the host.
enum Work {
    Start,
    Close,
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    /// The socket of a generation: opened (0), a frame (1), closed (2); see `Client::socket`.
    Socket(u32, u32, JsValue),
    /// The reconnect timer (1), or the tick or a page event (anything else).
    Wake(u32),
    Token(Option<String>),
    Verified(Uuid, u16, JsValue),
    /// A vote's answer: the balance, and the token `getToken()` gave for it.
    Voted(i64, Option<String>),
}

impl Inner {
    fn run(&mut self, work: Work) {
        match work {
            Work::Start => self.start(),
            Work::Close => self.stop(JsValue::NULL),
            Work::Subscribe(names) => self.subscribe(names),
            Work::Unsubscribe(names) => self.unsubscribe(names),
            Work::Socket(generation, 0, _) => self.on_open(generation),
            Work::Socket(generation, 1, frame) => self.on_message(generation, frame),
            Work::Socket(generation, _, code) => {
                self.on_close(generation, code.as_f64().unwrap_or(0.0) as u16)
            }
            Work::Wake(1) => self.open_socket(),
            Work::Wake(_) => self.check(),
            Work::Token(token) => self.on_token(token),
            Work::Verified(id, status, body) => self.on_verified(id, status, body),
            Work::Voted(balance, token) => {
                if let Some(token) = token {
                    self.token = Some(token);
                }
                if self.store.set_balance(balance) {
                    self.outbox.balance = true;
                }
            }
        }
    }
}

/// The client the `livevote` package wraps (npm/src/core.js): the page's calls, and the
/// host's reports of what happened (socket events, timers, tokens, HTTP answers).
#[wasm_bindgen]
pub struct Client {
    host: Host,
    inner: RefCell<Inner>,
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
    fn state(&self) -> RefMut<'_, Inner> {
        self.inner.try_borrow_mut().unwrap_or_else(|_| {
            wasm_bindgen::throw_str("livevote: the client was called from inside itself")
        })
    }
}

#[wasm_bindgen]
impl Client {
    /// Reads the options the package prepared (`token`, `getToken`, `channels`,
    /// `heartbeatIntervalMs`, `pongTimeoutMs`). Nothing connects until `start()`.
    #[wasm_bindgen(constructor)]
    pub fn new(host: Host, options: JsValue) -> Client {
        let number = |key: &str, default: f64| {
            get(&options, key)
                .as_f64()
                .filter(|value| *value > 0.0)
                .unwrap_or(default)
        };
        let deadline = number("heartbeatIntervalMs", DEFAULT_HEARTBEAT_MS)
            + number("pongTimeoutMs", DEFAULT_PONG_TIMEOUT_MS);
        let mut channels: Vec<(String, ChannelState)> = Vec::new();
        for name in js::strings(&get(&options, "channels")) {
            let name = canonical_channel(&name);
            if !channels.iter().any(|(known, _)| *known == name) {
                channels.push((name, ChannelState::Pending));
            }
        }
        let inner = Inner {
            host: host.clone().unchecked_into(),
            has_get_token: get(&options, "getToken").is_function(),
            liveness_deadline_ms: deadline,
            // Checked four times per deadline, at most once a second: cheap, and a dead
            // link is noticed within a quarter deadline of the deadline.
            tick_ms: (deadline / 4.0).clamp(50.0, 1_000.0) as u32,
            started: false,
            listening_to_page: false,
            phase: Phase::Connecting,
            token: get(&options, "token")
                .as_string()
                .filter(|token| !token.is_empty()),
            socket: None,
            generation: 0,
            last_frame_at: 0.0,
            tick: None,
            retry_timer: None,
            retry_at: 0.0,
            attempt: 0,
            close_code: None,
            error: JsValue::NULL,
            unauthorized_retry_used: false,
            token_request_in_flight: false,
            connect_when_token_arrives: false,
            channels,
            store: Store::default(),
            aside: None,
            stale: false,
            unverified: Vec::new(),
            clock: ClockOffset::default(),
            outbox: Outbox::default(),
            event_objects: Vec::new(),
            snapshot_object: None,
            status_object: None,
        };
        Client {
            host,
            inner: RefCell::new(inner),
            later: Cell::new(Vec::new()),
        }
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

    /// The host's report of the socket of `generation`: `kind` 0 opened, 1 a frame (`value` is
    /// its `JSON.parse`d content, `undefined` when it was not JSON text), 2 closed (`value` is
    /// the close code).
    pub fn socket(&self, generation: u32, kind: u32, value: JsValue) {
        self.enter(Work::Socket(generation, kind, value));
    }

    /// A timer or a page event: `kind` 1 is the reconnect timer, anything else the liveness
    /// tick or a page wake-up (`online`, `focus`, `visibilitychange`).
    pub fn wake(&self, kind: u32) {
        self.enter(Work::Wake(kind));
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
