//! The HTTP calls the client makes itself (`POST /api/events/{id}/votes` for `vote()`,
//! `GET /api/events/{id}` to learn how an event ended while the socket was down), through the
//! global `fetch` of the browser or of Node 20.

use js_sys::{Object, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::js::{get, set};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = fetch, catch)]
    fn global_fetch(url: &str, init: &JsValue) -> Result<Promise, JsValue>;
}

/// An answer: the status and the parsed JSON body (`undefined` when the body was not JSON).
pub struct Answer {
    pub status: u16,
    pub body: JsValue,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `{"error": {"code", "message"}}` body's code and message, when there is one.
    pub fn error_code(&self) -> (String, String) {
        let error = get(&self.body, "error");
        let code = get(&error, "code").as_string();
        let message = get(&error, "message").as_string();
        match code {
            Some(code) => (code, message.unwrap_or_default()),
            None => {
                let mut code = String::from("HTTP_");
                code.push_str(itoa(u64::from(self.status)).as_str());
                (
                    code,
                    String::from("the server answered with an unexpected status"),
                )
            }
        }
    }
}

/// One request. `Err` carries the JavaScript error when no answer came at all (network down,
/// refused, blocked by CORS).
pub async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
    idempotency_key: Option<&str>,
) -> Result<Answer, JsValue> {
    let headers = Object::new();
    if let Some(token) = token {
        let mut bearer = String::from("Bearer ");
        bearer.push_str(token);
        set(&headers, "Authorization", &bearer.into());
    }
    if let Some(key) = idempotency_key {
        set(&headers, "Idempotency-Key", &key.into());
    }
    let init = Object::new();
    set(&init, "method", &method.into());
    if let Some(body) = body {
        set(&headers, "Content-Type", &"application/json".into());
        set(&init, "body", &body.into());
    }
    set(&init, "headers", &headers);
    let response: web_sys::Response = JsFuture::from(global_fetch(url, &init)?)
        .await?
        .unchecked_into();
    let status = response.status();
    let body = match response.json() {
        Ok(promise) => JsFuture::from(promise).await.unwrap_or(JsValue::UNDEFINED),
        Err(_) => JsValue::UNDEFINED,
    };
    Ok(Answer { status, body })
}

/// Decimal text of a number without `core::fmt` (which would pull float formatting in).
pub fn itoa(mut value: u64) -> String {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    String::from_utf8_lossy(&digits[start..]).into_owned()
}
