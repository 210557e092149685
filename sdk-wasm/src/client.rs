//! The connection and everything that keeps it honest: one socket at a time, auto-pong,
//! wall-clock liveness, reconnect by the close-code table, resubscribe, stale-while-resync,
//! in-band token refresh, the server clock, listeners and the immutable snapshot.
//!
//! All state lives in one `Inner` behind `Rc<RefCell<_>>`. Every way in (socket handlers,
//! timers, page events, resolved promises, calls from the page) goes through [`enter`], which
//! borrows the state, lets it record what changed in an outbox, releases it, and only then calls
//! the page's listeners: a listener may call back into the client (even `close()`) safely.
//!
//! While a socket or timer is alive it holds the state strongly, so a client keeps running even
//! when the page drops its reference, like a WebSocket does; `close()` (or a stop by the server)
//! drops them all, which breaks that cycle.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use gloo_timers::callback::{Interval, Timeout};
use js_sys::{Array, Function, Object, Promise, Reflect};
use livevote_protocol::{close_codes, notice_codes, Channel, ServerMessage};
use uuid::Uuid;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, spawn_local, JsFuture};
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::clock::ClockOffset;
use crate::decode;
use crate::http;
use crate::js::{self, get, set};
use crate::policy::{self, CloseAction};
use crate::state::{Change, EventState, Store};
use crate::view;

type Shared = Rc<RefCell<Inner>>;

/// The contract's default server heartbeat and pong timeout, used when the page does not say.
const DEFAULT_HEARTBEAT_MS: f64 = 20_000.0;
const DEFAULT_PONG_TIMEOUT_MS: f64 = 10_000.0;
/// Tries to learn an event's final state over HTTP before waiting for the next reconnect.
const MAX_VERIFY_ATTEMPTS: u32 = 5;
/// The pong command, constant, so answering a PING costs no serialization.
const PONG: &str = r#"{"action":"pong"}"#;

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

/// What the page can listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    Event,
    Remove,
    Balance,
    Notice,
    Status,
    /// The store: called without argument whenever the snapshot changed.
    Store,
}

impl Topic {
    fn parse(name: &str) -> Option<Topic> {
        Some(match name {
            "event" => Topic::Event,
            "remove" => Topic::Remove,
            "balance" => Topic::Balance,
            "notice" => Topic::Notice,
            "status" => Topic::Status,
            "store" => Topic::Store,
            _ => return None,
        })
    }
}

/// One live socket and the handlers bound to it. Dropping the handlers (in [`Socket::retire`])
/// makes a superseded socket mute for good.
struct Socket {
    web_socket: WebSocket,
    generation: u32,
    opened_at: Option<f64>,
    /// What the server's SERVER_RESTARTING notice on this socket asked for.
    retry_after_ms: Option<f64>,
    /// The channels of each subscribe command sent on this socket and not yet answered. The
    /// server answers every subscribe command, in order, with one SUBSCRIBED (after the
    /// denials), so a channel of the answered command that is neither listed nor denied by then
    /// will never be answered: it counts as denied rather than pending forever.
    unanswered: Vec<Vec<String>>,
    _handlers: [Closure<dyn FnMut(JsValue)>; 3],
}

thread_local! {
    /// The error handler of every socket. Errors are followed by a close event, which is where
    /// reconnecting happens; but Node's `ws` throws an error event that has no listener (closing
    /// a socket still connecting raises one), so every socket keeps this one, even retired.
    static IGNORE_ERROR: JsValue = Closure::<dyn FnMut(JsValue)>::new(|_: JsValue| {}).into_js_value();
}

impl Socket {
    fn retire(self) {
        let web_socket = &self.web_socket;
        web_socket.set_onopen(None);
        web_socket.set_onmessage(None);
        web_socket.set_onclose(None);
        if web_socket.ready_state() <= WebSocket::OPEN {
            let _ = web_socket.close_with_code(close_codes::NORMAL);
        }
    }

    fn send(&self, text: &str) {
        if self.opened_at.is_some() {
            // A send on a socket that is closing fails; its close handler reconnects anyway.
            let _ = self.web_socket.send_with_str(text);
        }
    }
}

/// A page event listener (`online`, `focus`, `visibilitychange`) to remove on close.
struct PageListener {
    target: web_sys::EventTarget,
    name: &'static str,
    handler: Closure<dyn FnMut(JsValue)>,
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
    me: Weak<RefCell<Inner>>,
    // Configuration.
    socket_url: String,
    api_url: String,
    web_socket_constructor: Function,
    get_token: Option<Function>,
    error_factory: Option<Function>,
    liveness_deadline_ms: f64,
    tick_ms: u32,
    // Connection.
    started: bool,
    phase: Phase,
    token: Option<String>,
    socket: Option<Socket>,
    generation: u32,
    last_frame_at: f64,
    tick: Option<Interval>,
    retry_timer: Option<Timeout>,
    retry_at: f64,
    attempt: u32,
    close_code: Option<u16>,
    error: JsValue,
    /// A 4001 already led to one new token since the last healthy socket.
    unauthorized_retry_used: bool,
    token_request_in_flight: bool,
    connect_when_token_arrives: bool,
    page_listeners: Vec<PageListener>,
    ready_waiters: Vec<(Function, Function)>,
    // State.
    channels: Vec<(String, ChannelState)>,
    store: Store,
    /// The fresh snapshot a new socket builds while the old state stays visible.
    aside: Option<Store>,
    stale: bool,
    unverified: Vec<Unverified>,
    clock: ClockOffset,
    // Listeners and the JavaScript objects handed out (kept so unchanged parts keep their identity).
    listeners: Vec<(u32, Topic, Function)>,
    next_listener_id: u32,
    outbox: Outbox,
    event_objects: Vec<(Uuid, JsValue)>,
    snapshot_object: Option<JsValue>,
    status_object: Option<JsValue>,
}

/// Runs `work` on the state, then delivers what it changed. When the state is already borrowed
/// (a re-entrant call from inside the client), the work runs in a microtask instead.
fn enter(shared: &Shared, work: impl FnOnce(&mut Inner) + 'static) {
    enter_boxed(shared, Box::new(work));
}

// One body for every kind of work, so that each caller does not get its own copy.
fn enter_boxed(shared: &Shared, work: Box<dyn FnOnce(&mut Inner)>) {
    match shared.try_borrow_mut() {
        Ok(mut inner) => work(&mut inner),
        Err(_) => {
            let shared = shared.clone();
            spawn_local(async move { enter_boxed(&shared, work) });
            return;
        }
    }
    deliver(shared);
}

/// Calls the listeners for everything in the outbox, with the state released.
fn deliver(shared: &Shared) {
    let calls = match shared.try_borrow_mut() {
        Ok(mut inner) => inner.take_calls(),
        Err(_) => return,
    };
    for (listener, argument) in calls {
        js::call_listener(&listener, &argument);
    }
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
    fn shared(&self) -> Shared {
        self.me
            .upgrade()
            .expect("the state is alive while one of its methods runs")
    }

    fn error(&self, code: &str, message: &str, details: &[(&str, JsValue)]) -> JsValue {
        js::make_error(self.error_factory.as_ref(), code, message, details)
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

    /// Sends `subscribe`/`unsubscribe` for `channels`, or `refresh` with `token`.
    fn send_command(&mut self, action: &str, channels: &[String], token: Option<&str>) {
        if let Some(socket) = &mut self.socket {
            socket.send(&view::command(action, channels, token));
            if action == "subscribe" {
                socket.unanswered.push(channels.to_vec());
            }
        }
    }

    // ----- Starting and opening sockets -----

    fn start(&mut self) {
        if std::mem::replace(&mut self.started, true) || self.phase == Phase::Closed {
            return;
        }
        self.listen_to_page();
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
        let generation = self.generation;
        let mut url = self.socket_url.clone();
        url.push_str(if url.contains('?') {
            "&token="
        } else {
            "?token="
        });
        url.push_str(&String::from(js_sys::encode_uri_component(&token)));
        let constructed =
            Reflect::construct(&self.web_socket_constructor, &Array::of1(&url.into()));
        let Ok(web_socket) = constructed.map(JsCast::unchecked_into::<WebSocket>) else {
            self.schedule_retry(CloseAction::Reconnect, None);
            return;
        };
        let shared = self.shared();
        let handler = |action: fn(&mut Inner, u32, JsValue)| {
            let shared = shared.clone();
            Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
                enter(&shared, move |inner| action(inner, generation, event))
            })
        };
        let handlers = [
            handler(|inner, generation, _| inner.on_open(generation)),
            handler(|inner, generation, event| {
                inner.on_message(generation, event.unchecked_into())
            }),
            handler(|inner, generation, event| inner.on_close(generation, event.unchecked_into())),
        ];
        web_socket.set_onopen(Some(handlers[0].as_ref().unchecked_ref()));
        web_socket.set_onmessage(Some(handlers[1].as_ref().unchecked_ref()));
        web_socket.set_onclose(Some(handlers[2].as_ref().unchecked_ref()));
        IGNORE_ERROR.with(|ignore| web_socket.set_onerror(Some(ignore.unchecked_ref())));
        self.socket = Some(Socket {
            web_socket,
            generation,
            opened_at: None,
            retry_after_ms: None,
            unanswered: Vec::new(),
            _handlers: handlers,
        });
        // A socket that never opens is caught by the same wall-clock deadline as a silent one.
        self.last_frame_at = now();
        self.set_phase(Phase::Connecting);
        if self.tick.is_none() {
            let shared = self.shared();
            self.tick = Some(Interval::new(self.tick_ms, move || {
                enter(&shared, Inner::check)
            }));
        }
    }

    fn retire_socket(&mut self) {
        if let Some(socket) = self.socket.take() {
            socket.retire();
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
            self.send_command("subscribe", &names, None);
        }
        self.outbox.snapshot = true;
        self.check_resync_done();
    }

    // ----- Messages -----

    fn on_message(&mut self, generation: u32, event: MessageEvent) {
        // A superseded socket's frames are dropped: its handlers are unhooked, and this catches
        // a frame already queued when that happened.
        if !self.is_current(generation) {
            return;
        }
        self.last_frame_at = now();
        let data = event.data();
        if !data.is_string() {
            return;
        }
        let Ok(parsed) = js::parse_json(&data) else {
            return;
        };
        if Array::is_array(&parsed) {
            for item in Array::from(&parsed).iter() {
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
        match &message {
            ServerMessage::Ping(ping) => {
                // Answered here, in the message handler: a timer could be throttled in a
                // background tab long enough for the server to give up on us.
                if let Some(socket) = &self.socket {
                    socket.send(PONG);
                }
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
                js::deep_freeze(&payload);
                self.outbox.notices.push(payload);
            }
            _ => match &mut self.aside {
                Some(aside) => {
                    aside.apply(&message);
                }
                None => match self.store.apply(&message) {
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

    fn on_close(&mut self, generation: u32, event: CloseEvent) {
        if self.is_current(generation) {
            self.lost(event.code());
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
        let retry_after_ms = socket.retry_after_ms;
        socket.retire();
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
                    &[("closeCode", code.into())],
                );
                self.stop(error);
            }
            CloseAction::Stop => self.stop(JsValue::NULL),
            CloseAction::RenewTokenOnceThenStop
                if self.get_token.is_some() && !self.unauthorized_retry_used =>
            {
                self.unauthorized_retry_used = true;
                self.token = None;
                self.schedule_retry(action, None);
            }
            CloseAction::RenewTokenOnceThenStop => {
                let error = self.error(
                    "UNAUTHORIZED",
                    "the server refused the token (4001)",
                    &[("closeCode", code.into())],
                );
                self.stop(error);
            }
            CloseAction::RenewTokenThenReconnect if self.get_token.is_none() => {
                let error = self.error(
                    "TOKEN_EXPIRED",
                    "the token expired and no getToken() was given to renew it (4002)",
                    &[("closeCode", code.into())],
                );
                self.stop(error);
            }
            CloseAction::RenewTokenThenReconnect => {
                self.token = None;
                self.schedule_retry(action, None);
            }
            _ => self.schedule_retry(action, retry_after_ms),
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
        let shared = self.shared();
        self.retry_timer = Some(Timeout::new(delay as u32, move || {
            enter(&shared, Inner::open_socket)
        }));
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
        for listener in self.page_listeners.drain(..) {
            let _ = listener.target.remove_event_listener_with_callback(
                listener.name,
                listener.handler.as_ref().unchecked_ref(),
            );
        }
        self.error = error;
        self.set_phase(Phase::Closed);
    }

    fn listen_to_page(&mut self) {
        let global: JsValue = js_sys::global().into();
        let document = get(&global, "document");
        for (target, name) in [
            (&global, "online"),
            (&global, "focus"),
            (&document, "visibilitychange"),
        ] {
            let has_listeners = target.is_object() && get(target, "addEventListener").is_function();
            if !has_listeners {
                // Node has no page events; the tick alone checks liveness there.
                continue;
            }
            let target: web_sys::EventTarget = target.clone().unchecked_into();
            let shared = self.shared();
            let handler = Closure::<dyn FnMut(JsValue)>::new(move |_| enter(&shared, Inner::check));
            if target
                .add_event_listener_with_callback(name, handler.as_ref().unchecked_ref())
                .is_ok()
            {
                self.page_listeners.push(PageListener {
                    target,
                    name,
                    handler,
                });
            }
        }
    }

    // ----- Tokens -----

    /// Asks `getToken()` for a new token (one request at a time). When it arrives it is sent
    /// in-band (`refresh`) on an open socket, and opens the next socket if one was waiting for it.
    fn request_token(&mut self) {
        let Some(get_token) = self.get_token.clone() else {
            if self.connect_when_token_arrives {
                let error = self.error(
                    "UNAUTHORIZED",
                    "no token and no getToken() to obtain one",
                    &[],
                );
                self.stop(error);
            }
            return;
        };
        if self.token_request_in_flight {
            return;
        }
        self.token_request_in_flight = true;
        let shared = self.shared();
        spawn_local(async move {
            let token = fetch_token(&get_token).await;
            enter(&shared, move |inner| inner.on_token(token));
        });
    }

    fn on_token(&mut self, token: Option<String>) {
        self.token_request_in_flight = false;
        if self.phase == Phase::Closed {
            return;
        }
        match token {
            Some(token) => {
                self.token = Some(token.clone());
                if self.socket.is_some() {
                    self.send_command("refresh", &[], Some(&token));
                }
                if std::mem::take(&mut self.connect_when_token_arrives) {
                    self.open_socket();
                }
            }
            None if self.connect_when_token_arrives => {
                if self.close_code == Some(close_codes::UNAUTHORIZED) {
                    let error = self.error(
                        "UNAUTHORIZED",
                        "getToken() failed after the server refused the token (4001)",
                        &[],
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
        let token = self.token.clone();
        for entry in &mut self.unverified {
            if entry.in_flight || entry.next_at > at {
                continue;
            }
            entry.in_flight = true;
            entry.attempts += 1;
            let id = entry.id;
            let mut url = self.api_url.clone();
            url.push_str("/api/events/");
            url.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
            let shared = self
                .me
                .upgrade()
                .expect("the state is alive while one of its methods runs");
            let token = token.clone();
            spawn_local(async move {
                let answer = http::request("GET", &url, token.as_deref(), None, None).await;
                enter(&shared, move |inner| inner.on_verified(id, answer));
            });
        }
    }

    fn on_verified(&mut self, id: Uuid, answer: Result<http::Answer, JsValue>) {
        let Some(position) = self.unverified.iter().position(|entry| entry.id == id) else {
            return;
        };
        let view = answer
            .as_ref()
            .ok()
            .filter(|answer| answer.ok())
            .and_then(|answer| decode::event_view(&answer.body));
        let status = answer.as_ref().map(|answer| answer.status).unwrap_or(0);
        let entry = &mut self.unverified[position];
        entry.in_flight = false;
        if let Some(view) = view {
            self.unverified.remove(position);
            if let Change::Event(id) = self.store.apply_view(&view) {
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
        if self
            .socket
            .as_ref()
            .is_some_and(|socket| socket.opened_at.is_some())
        {
            self.send_command("subscribe", &added, None);
        }
    }

    fn unsubscribe(&mut self, names: Vec<String>) {
        let names: Vec<String> = names.iter().map(|name| canonical_channel(name)).collect();
        let before = self.channels.len();
        self.channels.retain(|(known, _)| !names.contains(known));
        if self.channels.len() == before {
            return;
        }
        self.outbox.snapshot = true;
        self.send_command("unsubscribe", &names, None);
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
        js::deep_freeze(&object);
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

    /// Turns the outbox into listener calls, refreshing the cached objects they receive.
    fn take_calls(&mut self) -> Vec<(Function, JsValue)> {
        let outbox = std::mem::take(&mut self.outbox);
        let mut calls = Vec::new();
        if outbox.touches_snapshot() {
            self.snapshot_object = None;
        }
        if outbox.status {
            self.status_object = None;
        }
        self.event_objects
            .retain(|(id, _)| !outbox.events.contains(id) && !outbox.removed.contains(id));
        let listeners = self.listeners.clone();
        let mut push = |topic: Topic, argument: &JsValue| {
            for (_, _, listener) in listeners.iter().filter(|(_, wanted, _)| *wanted == topic) {
                calls.push((listener.clone(), argument.clone()));
            }
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
        if outbox.touches_snapshot() {
            push(Topic::Store, &JsValue::UNDEFINED);
        }
        match self.phase {
            Phase::Live => {
                for (resolve, _) in self.ready_waiters.drain(..) {
                    calls.push((resolve, JsValue::UNDEFINED));
                }
            }
            Phase::Closed => {
                let error = self.closed_error();
                for (_, reject) in self.ready_waiters.drain(..) {
                    calls.push((reject, error.clone()));
                }
            }
            _ => {}
        }
        calls
    }

    fn closed_error(&self) -> JsValue {
        if self.error.is_null() {
            self.error("CLIENT_CLOSED", "the client is closed", &[])
        } else {
            self.error.clone()
        }
    }
}

/// Calls `getToken()` and waits for it; `None` when it throws, rejects or gives no string.
async fn fetch_token(get_token: &Function) -> Option<String> {
    let promise = Promise::resolve(&get_token.call0(&JsValue::UNDEFINED).ok()?);
    let token = JsFuture::from(promise).await.ok()?.as_string()?;
    (!token.is_empty()).then_some(token)
}

/// A random version-4 uuid for an idempotency key (`crypto.randomUUID` is missing on
/// insecure origins such as plain-http pages).
fn random_key() -> String {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(4) {
        let random = (js_sys::Math::random() * 4_294_967_296.0) as u32;
        chunk.copy_from_slice(&random.to_le_bytes());
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The client the `livevote` package wraps. Its methods are the package's, in camelCase.
#[wasm_bindgen]
pub struct Client {
    inner: Shared,
}

#[wasm_bindgen]
impl Client {
    /// Reads the options the package prepared (`socketUrl`, `apiUrl`, `WebSocket`, `token`
    /// and/or `getToken`, `channels`, `heartbeatIntervalMs`, `pongTimeoutMs`, `makeError`).
    /// Nothing connects until `start()`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue) -> Result<Client, JsValue> {
        let text = |key: &str| get(&options, key).as_string();
        let function = |key: &str| get(&options, key).dyn_into::<Function>().ok();
        let number = |key: &str, default: f64| {
            get(&options, key)
                .as_f64()
                .filter(|value| *value > 0.0)
                .unwrap_or(default)
        };
        let error_factory = function("makeError");
        let invalid =
            |message: &str| js::make_error(error_factory.as_ref(), "INVALID_OPTIONS", message, &[]);
        let socket_url = text("socketUrl").ok_or_else(|| invalid("socketUrl is required"))?;
        let api_url = text("apiUrl").ok_or_else(|| invalid("apiUrl is required"))?;
        let web_socket_constructor = function("WebSocket")
            .ok_or_else(|| invalid("no WebSocket implementation: pass options.WebSocket"))?;
        let token = text("token").filter(|token| !token.is_empty());
        let get_token = function("getToken");
        if token.is_none() && get_token.is_none() {
            return Err(invalid("either token or getToken is required"));
        }
        let deadline = number("heartbeatIntervalMs", DEFAULT_HEARTBEAT_MS)
            + number("pongTimeoutMs", DEFAULT_PONG_TIMEOUT_MS);
        let mut channels: Vec<(String, ChannelState)> = Vec::new();
        for name in js::strings(&get(&options, "channels")) {
            let name = canonical_channel(&name);
            if !channels.iter().any(|(known, _)| *known == name) {
                channels.push((name, ChannelState::Pending));
            }
        }
        let inner = Rc::new_cyclic(|me| {
            RefCell::new(Inner {
                me: me.clone(),
                socket_url,
                api_url,
                web_socket_constructor,
                get_token,
                error_factory,
                liveness_deadline_ms: deadline,
                // Checked four times per deadline, at most once a second: cheap, and a dead
                // link is noticed within a quarter deadline of the deadline.
                tick_ms: (deadline / 4.0).clamp(50.0, 1_000.0) as u32,
                started: false,
                phase: Phase::Connecting,
                token,
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
                page_listeners: Vec::new(),
                ready_waiters: Vec::new(),
                channels,
                store: Store::default(),
                aside: None,
                stale: false,
                unverified: Vec::new(),
                clock: ClockOffset::default(),
                listeners: Vec::new(),
                next_listener_id: 0,
                outbox: Outbox::default(),
                event_objects: Vec::new(),
                snapshot_object: None,
                status_object: None,
            })
        });
        Ok(Client { inner })
    }

    /// Connects (once; later calls do nothing).
    pub fn start(&self) {
        enter(&self.inner, Inner::start);
    }

    /// Adds a listener for `event`, `remove`, `balance`, `notice`, `status` or `store`; returns
    /// the id that `unlisten` takes.
    pub fn listen(&self, topic: &str, listener: Function) -> Result<u32, JsValue> {
        let mut inner = self.inner.borrow_mut();
        let Some(topic) = Topic::parse(topic) else {
            return Err(inner.error(
                "INVALID_OPTIONS",
                "unknown topic: use event, remove, balance, notice or status",
                &[],
            ));
        };
        inner.next_listener_id += 1;
        let id = inner.next_listener_id;
        inner.listeners.push((id, topic, listener));
        Ok(id)
    }

    pub fn unlisten(&self, id: u32) {
        self.inner
            .borrow_mut()
            .listeners
            .retain(|(known, _, _)| *known != id);
    }

    /// The immutable snapshot: the same object until something changes.
    pub fn snapshot(&self) -> JsValue {
        self.inner.borrow_mut().snapshot()
    }

    pub fn subscribe(&self, channels: JsValue) {
        let names = js::strings(&channels);
        enter(&self.inner, move |inner| inner.subscribe(names));
    }

    pub fn unsubscribe(&self, channels: JsValue) {
        let names = js::strings(&channels);
        enter(&self.inner, move |inner| inner.unsubscribe(names));
    }

    /// Server time now, in milliseconds since the Unix epoch (local time corrected by the offset
    /// estimated from PINGs).
    #[wasm_bindgen(js_name = serverNow)]
    pub fn server_now(&self) -> f64 {
        now() + self.inner.borrow().clock.offset_ms()
    }

    /// Milliseconds until an event (an id or a state object) closes by the server's clock;
    /// 0 once closed or past due, `NaN` for an unknown id.
    #[wasm_bindgen(js_name = remainingMs)]
    pub fn remaining_ms(&self, event: JsValue) -> f64 {
        let event = match event.as_string().map(|id| Uuid::try_parse(&id)) {
            Some(Ok(id)) => self
                .inner
                .borrow_mut()
                .event_object(id)
                .unwrap_or(JsValue::UNDEFINED),
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

    /// Resolves once every channel has been answered on an open socket (at once when live);
    /// rejects when the client stops.
    pub fn ready(&self) -> Promise {
        let mut inner = self.inner.borrow_mut();
        match inner.phase {
            Phase::Live => Promise::resolve(&JsValue::UNDEFINED),
            Phase::Closed => Promise::reject(&inner.closed_error()),
            _ => {
                let mut waiter = None;
                let promise = Promise::new(&mut |resolve, reject| waiter = Some((resolve, reject)));
                inner.ready_waiters.extend(waiter);
                promise
            }
        }
    }

    /// `POST /api/events/{eventId}/votes`. Resolves with `{balance, totals}`; rejects with a
    /// typed error carrying the contract's code (`INSUFFICIENT_BALANCE`, `EVENT_CLOSED`...),
    /// `NETWORK_ERROR` when no answer came, or `CLIENT_CLOSED`. A 401 is retried once with a
    /// fresh token from `getToken()`, under the same idempotency key.
    pub fn vote(
        &self,
        event_id: String,
        option_id: String,
        votes: u32,
        idempotency_key: Option<String>,
    ) -> Promise {
        let shared = self.inner.clone();
        future_to_promise(
            async move { vote(shared, event_id, option_id, votes, idempotency_key).await },
        )
    }

    /// Stops: closes the socket with 1000 and leaves no timer, socket or page listener behind.
    pub fn close(&self) {
        enter(&self.inner, |inner| inner.stop(JsValue::NULL));
    }
}

async fn vote(
    shared: Shared,
    event_id: String,
    option_id: String,
    votes: u32,
    idempotency_key: Option<String>,
) -> Result<JsValue, JsValue> {
    let (url, mut token, get_token) = {
        let inner = shared.borrow();
        if inner.phase == Phase::Closed {
            return Err(inner.error("CLIENT_CLOSED", "the client is closed", &[]));
        }
        let mut url = inner.api_url.clone();
        url.push_str("/api/events/");
        url.push_str(&String::from(js_sys::encode_uri_component(&event_id)));
        url.push_str("/votes");
        (url, inner.token.clone(), inner.get_token.clone())
    };
    let key = idempotency_key.unwrap_or_else(random_key);
    let body = view::vote_body(&option_id, votes);
    let mut renewed = false;
    loop {
        if token.is_none() && !renewed {
            if let Some(get_token) = &get_token {
                token = fetch_token(get_token).await;
                renewed = true;
            }
        }
        let answer = http::request(
            "POST",
            &url,
            token.as_deref(),
            Some(body.clone()),
            Some(&key),
        )
        .await;
        let inner = shared.borrow();
        let answer = match answer {
            Ok(answer) => answer,
            Err(cause) => {
                return Err(inner.error(
                    "NETWORK_ERROR",
                    "the vote request got no answer",
                    &[("cause", cause)],
                ));
            }
        };
        if answer.status == 401 && !renewed && get_token.is_some() {
            drop(inner);
            token = None;
            continue;
        }
        if !answer.ok() {
            let (code, message) = answer.error_code();
            return Err(inner.error(&code, &message, &[("status", answer.status.into())]));
        }
        let Some(response) = decode::vote_response(&answer.body) else {
            return Err(inner.error("BAD_RESPONSE", "the vote answer was not understood", &[]));
        };
        drop(inner);
        if renewed {
            if let Some(token) = token {
                enter(&shared, move |inner| inner.token = Some(token));
            }
        }
        enter(&shared, move |inner| {
            if inner.store.set_balance(response.balance) {
                inner.outbox.balance = true;
            }
        });
        js::deep_freeze(&answer.body);
        return Ok(answer.body);
    }
}
