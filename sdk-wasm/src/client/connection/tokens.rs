//! Tokens: one `getToken()` request at a time, sent in-band on an open socket or opening the
//! socket that waited for it.

use livevote_protocol::close_codes;
use wasm_bindgen::JsValue;

use super::{Connection, Phase};
use crate::policy::CloseAction;

impl Connection {
    /// Asks `getToken()` for a new token (one request at a time). When it arrives it is sent
    /// in-band (`refresh`) on an open socket, and opens the next socket if one was waiting for it.
    pub(super) fn request_token(&mut self) {
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

    pub(super) fn on_token(&mut self, token: Option<String>) {
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
}
