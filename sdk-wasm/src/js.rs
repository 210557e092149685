//! Small bridges to JavaScript: JSON through the engine's own `JSON.parse`/`JSON.stringify`
//! (so the wasm carries no JSON parser and no float formatting), frozen objects, typed errors.

use js_sys::{Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = JSON, js_name = parse, catch)]
    pub fn parse_json(text: &JsValue) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(js_namespace = console, js_name = error)]
    pub fn console_error(message: &str, error: &JsValue);
}

/// Freezes an object and everything inside it, so that a snapshot handed to the page can be
/// shared and compared by identity without anyone changing it underneath.
pub fn deep_freeze(value: &JsValue) {
    if !value.is_object() {
        return;
    }
    let object: &Object = value.unchecked_ref();
    if Object::is_frozen(object) {
        return;
    }
    Object::freeze(object);
    for child in Object::values(object).iter() {
        deep_freeze(&child);
    }
}

/// `object[key] = value`.
pub fn set(object: &Object, key: &str, value: &JsValue) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(object, &JsValue::from_str(key), value);
}

/// `object[key]`, or `undefined`.
pub fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Builds the error the client rejects with: the package's `LivevoteError` when the
/// JavaScript side supplied its factory, else a plain `Error` carrying the same fields.
pub fn make_error(
    factory: Option<&Function>,
    code: &str,
    message: &str,
    details: &[(&str, JsValue)],
) -> JsValue {
    let extra = Object::new();
    for (key, value) in details {
        set(&extra, key, value);
    }
    if let Some(factory) = factory {
        if let Ok(error) = factory.call3(&JsValue::UNDEFINED, &code.into(), &message.into(), &extra)
        {
            return error;
        }
    }
    let error: JsValue = js_sys::Error::new(message).into();
    let object: &Object = error.unchecked_ref();
    set(object, "code", &code.into());
    Object::assign(object, &extra);
    error
}

/// Calls a listener; a listener that throws is reported and does not stop the others.
pub fn call_listener(listener: &Function, argument: &JsValue) {
    if let Err(error) = listener.call1(&JsValue::UNDEFINED, argument) {
        console_error("livevote: a listener threw", &error);
    }
}

/// Reads an array of strings, ignoring anything that is not a string.
pub fn strings(value: &JsValue) -> Vec<String> {
    if let Some(single) = value.as_string() {
        return vec![single];
    }
    if !Array::is_array(value) {
        return Vec::new();
    }
    Array::from(value)
        .iter()
        .filter_map(|item| item.as_string())
        .collect()
}
