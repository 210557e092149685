//! Liveness and closing: the wall-clock deadline, what a lost socket means by the close-code
//! table, the backoff timer, and the stop that leaves nothing behind.

use livevote_protocol::close_codes;
use wasm_bindgen::JsValue;

use super::{Connection, Phase};
use crate::client::host::{now, Timer};
use crate::policy::{self, CloseAction};

impl Connection {
    /// The periodic tick and the page's wake-up events: a connection silent for longer than the
    /// heartbeat plus the pong timeout is dead, however long the timers were throttled.
    pub(super) fn check(&mut self) {
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

    /// The state shown is no longer confirmed by a connection.
    pub(super) fn mark_stale(&mut self) {
        for id in self.store.mark_stale() {
            self.outbox.event(id);
        }
        if !self.store.is_empty() {
            self.stale = true;
        }
        self.outbox.snapshot = true;
    }

    /// The current socket is gone (closed by the server, dropped, or declared dead): decide
    /// by the close-code table.
    pub(super) fn lost(&mut self, code: u16) {
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
        self.channels.all_pending();
        self.mark_stale();
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

    pub(super) fn schedule_retry(&mut self, action: CloseAction, retry_after_ms: Option<f64>) {
        let delay = policy::reconnect_delay_ms(
            &self.backoff,
            action,
            self.attempt,
            js_sys::Math::random(),
            retry_after_ms,
        );
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = now() + delay;
        self.set_phase(Phase::Reconnecting);
        self.outbox.status = true;
        self.retry_timer = Some(Timer::after(&self.host, delay as u32));
    }

    /// Stops: no socket, no timer, no page listener is left behind.
    pub(super) fn stop(&mut self, error: JsValue) {
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
}
