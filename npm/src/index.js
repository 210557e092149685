// The default entry for browsers and bundlers: the wasm is inlined (base64), so one file works
// from a `file://` page, with Vite or webpack, and needs no server to fetch a .wasm from.
import initWasm, { Client } from "livevote:glue";
import wasmBase64 from "livevote:inline";
import { makeConnect, once, decodeBase64 } from "./core.js";

export { LivevoteError } from "./core.js";

const loadWasm = once(() => initWasm({ module_or_path: decodeBase64(wasmBase64) }).then(() => Client));

/** Connects to a livevote server; see the package README and `types/index.d.ts`. */
export const connect = makeConnect(loadWasm, async () => undefined);
