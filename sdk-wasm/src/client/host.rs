//! What the package's JavaScript carries out for the client (`host` in npm/src/core.js): it
//! constructs sockets, arms timers, listens to the page, calls `getToken()`, fetches and calls
//! the page's listeners, then reports back through the exported methods of [`super::Client`].

use js_sys::Array;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// What the package's JavaScript does on the client's behalf.
    pub type Host;

    /// Constructs the WebSocket for `token` and wires its events to `Client::socket` with
    /// `generation`; throws when the constructor does.
    #[wasm_bindgen(method, catch)]
    pub fn open(this: &Host, token: &str, generation: u32) -> Result<JsValue, JsValue>;
    /// Unhooks a socket's handlers and closes it with 1000 if it is still open or opening.
    #[wasm_bindgen(method)]
    pub fn retire(this: &Host, socket: &JsValue);
    /// Sends `{action, channels: value}` (or `{action, token: value}` for `refresh`).
    #[wasm_bindgen(method)]
    pub fn send(this: &Host, socket: &JsValue, action: &str, value: &JsValue);
    /// `setInterval(() => client.wake(Wake::Check), ms)`: the liveness tick.
    #[wasm_bindgen(method)]
    pub fn every(this: &Host, ms: u32) -> JsValue;
    /// `setTimeout(() => client.wake(Wake::RetryTimer), ms)`: the reconnect timer.
    #[wasm_bindgen(method)]
    pub fn after(this: &Host, ms: u32) -> JsValue;
    /// Adds (or removes) the `online`, `focus` and `visibilitychange` listeners calling
    /// `client.wake(Wake::Check)`.
    #[wasm_bindgen(method)]
    pub fn page(this: &Host, listen: bool);
    /// Calls `getToken()` in a later task and hands its answer to `Client::tokenArrived`.
    #[wasm_bindgen(method, js_name = getToken)]
    pub fn get_token(this: &Host);
    /// `GET /api/events/{id}`, answered through `Client::verified`.
    #[wasm_bindgen(method, js_name = fetchEvent)]
    pub fn fetch_event(this: &Host, id: &str, token: Option<&str>);
    /// A `LivevoteError`.
    #[wasm_bindgen(method)]
    pub fn error(this: &Host, code: &str, message: &str, close_code: Option<u16>) -> JsValue;
    /// Freezes an object and everything inside it.
    #[wasm_bindgen(method)]
    pub fn freeze(this: &Host, value: &JsValue);
    /// Calls the listeners: `batch` is `[topic, argument, topic, argument...]` (topics numbered
    /// as [`super::objects::Topic`]).
    #[wasm_bindgen(method)]
    pub fn emit(this: &Host, batch: &Array);

    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_name = clearInterval)]
    fn clear_interval(handle: &JsValue);
}

/// A timer armed by the host; dropping it clears it.
pub struct Timer {
    handle: JsValue,
    repeating: bool,
}

impl Timer {
    /// The liveness tick, every `ms`.
    pub fn every(host: &Host, ms: u32) -> Timer {
        Timer {
            handle: host.every(ms),
            repeating: true,
        }
    }

    /// The reconnect timer, once after `ms`.
    pub fn after(host: &Host, ms: u32) -> Timer {
        Timer {
            handle: host.after(ms),
            repeating: false,
        }
    }
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

/// The local clock, in milliseconds since the Unix epoch.
pub fn now() -> f64 {
    js_sys::Date::now()
}
