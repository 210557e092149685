// The entry for size-minded apps: the wasm stays a separate file next to this one, fetched
// (and compiled while downloading) on the first `connect()`. Bundlers see the `new URL(...,
// import.meta.url)` below and ship the .wasm as an asset.
import initWasm, { Client } from "livevote:glue";
import { makeConnect, once } from "./core.js";
import { guardConnect, guardWasm } from "./failures.js";

export { LivevoteError } from "./core.js";

// Replaced after bundling by `new URL("./livevote_sdk_bg.wasm", import.meta.url)`, so that the
// package's own build does not inline the file and the app's bundler does find it.
const wasmUrl = () => __LIVEVOTE_WASM_URL__;

const loadWasm = once(guardWasm(() => initWasm({ module_or_path: wasmUrl() }).then(() => Client)));

/** Connects to a livevote server; see the package README and `types/index.d.ts`. */
export const connect = guardConnect(makeConnect(loadWasm, async () => undefined));
