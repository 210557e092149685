// Turns whatever can go wrong before a client exists into a LivevoteError with a code, so that
// a page can tell a Content Security Policy that blocks WebAssembly (WASM_BLOCKED) from a
// .wasm that did not download (WASM_LOAD_FAILED) or any other surprise (INTERNAL).
import { LivevoteError } from "./core.js";

// Chromium: "Refused to compile or instantiate WebAssembly module because 'unsafe-eval' is not
// an allowed source of script in the following Content Security Policy directive"; Firefox:
// "call to WebAssembly.instantiate() blocked by CSP"; Safari throws an EvalError.
const BLOCKED = /Content Security Policy|CSP|unsafe-eval/i;

/** `loadWasm` whose failures are LivevoteErrors. */
export const guardWasm = (loadWasm) => () =>
  loadWasm().catch((cause) => {
    if (cause instanceof LivevoteError) throw cause;
    const message = String((cause && cause.message) || cause);
    if ((typeof EvalError === "function" && cause instanceof EvalError) || BLOCKED.test(message)) {
      throw new LivevoteError(
        "WASM_BLOCKED",
        "this page's Content-Security-Policy does not let WebAssembly run: add 'wasm-unsafe-eval' to script-src (" + message + ")",
        { cause },
      );
    }
    throw new LivevoteError("WASM_LOAD_FAILED", "the livevote wasm module could not be loaded: " + message, { cause });
  });

/** `connect` whose every rejection is a LivevoteError. */
export const guardConnect = (connect) => (options) =>
  connect(options).catch((cause) => {
    throw cause instanceof LivevoteError ? cause : new LivevoteError("INTERNAL", "connect() failed: " + String((cause && cause.message) || cause), { cause });
  });
