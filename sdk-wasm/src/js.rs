//! Small bridges to JavaScript objects: reading and writing properties, and string lists.

use js_sys::{Array, Object, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// `object[key] = value`.
pub fn set(object: &Object, key: &str, value: &JsValue) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(object, &JsValue::from_str(key), value);
}

/// `object[key]`, or `undefined`.
pub fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// The array itself when `value` is one (no copy, unlike `Array::from`).
pub fn as_array(value: &JsValue) -> Option<&Array> {
    Array::is_array(value).then(|| value.unchecked_ref())
}

/// Reads an array of strings, ignoring anything that is not a string.
pub fn strings(value: &JsValue) -> Vec<String> {
    if let Some(single) = value.as_string() {
        return vec![single];
    }
    match as_array(value) {
        Some(array) => array.iter().filter_map(|item| item.as_string()).collect(),
        None => Vec::new(),
    }
}
