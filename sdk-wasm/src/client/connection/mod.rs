//! The connection's state machine: one socket at a time, auto-pong, wall-clock liveness,
//! reconnect by the close-code table, resubscribe, stale-while-resync, in-band token refresh,
//! the verification of events missing from a fresh snapshot, and the server clock.
//!
//! Every decision is taken here, in answer to one [`Work`] at a time; the [`Host`] carries it out.
//! The rules themselves are plain Rust beside it: the close-code table and backoff
//! ([`crate::policy`]), the merge ([`crate::state`]), the channels ([`super::channels`]). This
//! file holds the state, the sockets and their messages; [`liveness`] the deadline and what a
//! close means, [`tokens`] `getToken()`, [`verify`] events missing from a fresh snapshot.

mod liveness;
mod tokens;
mod verify;

use js_sys::Array;
use livevote_protocol::{notice_codes, ServerMessage};
use uuid::Uuid;
use wasm_bindgen::JsValue;

use super::channels::{ChannelState, Channels};
use super::host::{now, Host, Timer};
use super::objects::{Objects, Outbox, Shown, Status};
use super::work::{SocketEvent, Wake, Work};
use crate::clock::ClockOffset;
use crate::decode;
use crate::js::{self, get};
use crate::policy::{Backoff, CloseAction};
use crate::state::{Change, Store};
use verify::Unverified;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A socket is opening, or open and waiting for its channels' snapshots.
    Connecting,
    /// Open, and every channel has been answered: the state is current.
    Live,
    /// Between sockets: waiting for the backoff timer or a new token.
    Reconnecting,
    /// Stopped, by `close()` or by the server (1000, 4003, a second 4001...), until `reconnect()`.
    Closed,
}

impl Phase {
    /// The spelling in `ConnectionStatus.state`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Live => "live",
            Phase::Reconnecting => "reconnecting",
            Phase::Closed => "closed",
        }
    }
}

/// How the page configured the client (`connect()`'s options, checked).
pub struct Settings {
    pub has_get_token: bool,
    pub token: Option<String>,
    pub channels: Channels,
    /// No frame for this long (heartbeat + pong timeout) and the connection is dead.
    pub liveness_deadline_ms: f64,
    pub backoff: Backoff,
}

/// One live socket. Retiring it (`Host::retire`) unhooks its handlers, so a superseded socket
/// is mute for good; `generation` catches a frame already queued when that happened.
struct Socket {
    web_socket: JsValue,
    generation: u32,
    opened_at: Option<f64>,
    /// What the server's SERVER_RESTARTING notice on this socket asked for.
    retry_after_ms: Option<f64>,
    /// The channels of each subscribe command sent on this socket and not yet answered, oldest
    /// first (the server answers them in order).
    unanswered: Vec<Vec<String>>,
}

pub struct Connection {
    host: Host,
    // Configuration.
    has_get_token: bool,
    liveness_deadline_ms: f64,
    tick_ms: u32,
    backoff: Backoff,
    // Connection.
    started: bool,
    listening_to_page: bool,
    phase: Phase,
    pub(super) token: Option<String>,
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
    channels: Channels,
    store: Store,
    /// The fresh snapshot a new socket builds while the old state stays visible.
    aside: Option<Store>,
    stale: bool,
    unverified: Vec<Unverified>,
    pub(super) clock: ClockOffset,
    // What changed, and the JavaScript objects handed out.
    outbox: Outbox,
    objects: Objects,
}

impl Connection {
    pub fn new(host: Host, settings: Settings) -> Connection {
        Connection {
            host,
            has_get_token: settings.has_get_token,
            liveness_deadline_ms: settings.liveness_deadline_ms,
            // Checked four times per deadline, at most once a second: cheap, and a dead
            // link is noticed within a quarter deadline of the deadline.
            tick_ms: (settings.liveness_deadline_ms / 4.0).clamp(50.0, 1_000.0) as u32,
            backoff: settings.backoff,
            started: false,
            listening_to_page: false,
            phase: Phase::Connecting,
            token: settings.token,
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
            channels: settings.channels,
            store: Store::default(),
            aside: None,
            stale: false,
            unverified: Vec::new(),
            clock: ClockOffset::default(),
            outbox: Outbox::default(),
            objects: Objects::default(),
        }
    }

    pub fn run(&mut self, work: Work) {
        match work {
            Work::Start => self.start(),
            Work::Close => self.stop(JsValue::NULL),
            Work::Reconnect => self.reconnect(),
            Work::Subscribe(names) => self.subscribe(names),
            Work::Unsubscribe(names) => self.unsubscribe(names),
            Work::Socket(generation, SocketEvent::Opened) => self.on_open(generation),
            Work::Socket(generation, SocketEvent::Message(frame)) => {
                self.on_message(generation, frame)
            }
            Work::Socket(generation, SocketEvent::Closed(code)) => {
                if self.is_current(generation) {
                    self.lost(code);
                }
            }
            Work::Wake(Wake::RetryTimer) => self.open_socket(),
            Work::Wake(Wake::Check) => self.check(),
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

    // ----- What the page sees -----

    /// The objects handed out, and what they are built from.
    fn objects_and_shown(&mut self) -> (&mut Objects, Shown<'_>) {
        let shown = Shown {
            host: &self.host,
            store: &self.store,
            status: Status {
                state: self.phase.name(),
                attempt: self.attempt,
                retry_at: (self.phase == Phase::Reconnecting && self.retry_timer.is_some())
                    .then_some(self.retry_at),
                close_code: self.close_code,
                error: &self.error,
            },
            stale: self.stale,
            channels: &self.channels,
        };
        (&mut self.objects, shown)
    }

    pub fn snapshot(&mut self) -> JsValue {
        let (objects, shown) = self.objects_and_shown();
        objects.snapshot(&shown)
    }

    pub fn event_object(&mut self, id: Uuid) -> Option<JsValue> {
        self.objects.event(&self.host, &self.store, id)
    }

    /// The listener calls for what changed since the last time; `None` when nothing did.
    pub fn take_calls(&mut self) -> Option<Array> {
        let outbox = std::mem::take(&mut self.outbox);
        let (objects, shown) = self.objects_and_shown();
        objects.calls(outbox, &shown)
    }

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

    // ----- Starting, reopening and opening sockets -----

    fn start(&mut self) {
        if std::mem::replace(&mut self.started, true) || self.phase == Phase::Closed {
            return;
        }
        self.listening_to_page = true;
        self.host.page(true);
        // The first status, for debug logging (no listener exists yet inside connect()).
        self.outbox.status = true;
        self.open_socket();
    }

    /// `reconnect()`: a closed client starts over (its state stays visible, marked stale,
    /// until the new socket's snapshot replaces it); one waiting for its backoff timer tries
    /// now; one connecting or live is left alone.
    fn reconnect(&mut self) {
        match self.phase {
            Phase::Closed => {
                self.attempt = 0;
                self.unauthorized_retry_used = false;
                self.error = JsValue::NULL;
                self.close_code = None;
                self.started = false;
                self.mark_stale();
                // Not yet Closed any more, so that start() goes ahead; the socket's phase follows.
                self.phase = Phase::Connecting;
                self.outbox.status = true;
                self.start();
            }
            Phase::Reconnecting if self.retry_timer.is_some() => self.open_socket(),
            _ => {}
        }
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
            self.tick = Some(Timer::every(&self.host, self.tick_ms));
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
        let names = self.channels.all_pending();
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
                let asked = self
                    .socket
                    .as_mut()
                    .filter(|socket| !socket.unanswered.is_empty())
                    .map(|socket| socket.unanswered.remove(0))
                    .unwrap_or_default();
                if self.channels.answered(&list.channels, asked) {
                    self.outbox.snapshot = true;
                }
                self.check_resync_done();
            }
            ServerMessage::Unsubscribed(_) => {}
            ServerMessage::SystemNotice(notice) => {
                match notice.code.as_str() {
                    notice_codes::SUBSCRIBE_DENIED => {
                        if let Some(name) = &notice.channel {
                            if self.channels.set(name, ChannelState::Denied) {
                                self.outbox.snapshot = true;
                            }
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

    /// Once every channel of the socket is answered: swap in the fresh snapshot and go live.
    fn check_resync_done(&mut self) {
        let open = self
            .socket
            .as_ref()
            .is_some_and(|socket| socket.opened_at.is_some());
        if !open || self.channels.any_pending() {
            return;
        }
        if let Some(fresh) = self.aside.take() {
            let balance_before = self.store.balance();
            let channels = &self.channels;
            let adoption = self.store.adopt(fresh, |state| channels.carry(state));
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

    // ----- Channels -----

    fn subscribe(&mut self, names: Vec<String>) {
        let added = self.channels.add(names);
        if added.is_empty() {
            return;
        }
        self.outbox.snapshot = true;
        self.send_channels("subscribe", added);
    }

    fn unsubscribe(&mut self, names: Vec<String>) {
        let Some(names) = self.channels.remove(&names) else {
            return;
        };
        self.outbox.snapshot = true;
        self.send_channels("unsubscribe", names);
        let channels = &self.channels;
        let removed = self.store.retain_carried(|state| channels.carry(state));
        if let Some(aside) = &mut self.aside {
            aside.retain_carried(|state| channels.carry(state));
        }
        self.outbox.removed.extend(removed);
        self.check_resync_done();
    }
}
