// The default entry for browsers and bundlers: the wasm is inlined (LZMA, base64), so one file works
// from a `file://` page, with Vite or webpack, and needs no server to fetch a .wasm from.
import initWasm, { Client } from "livevote:glue";
import { makeConnect, once } from "./core.js";
import { unlzma } from "./unlzma.js";
// Imported last so that the bundle ends with the inlined bytes: gzip then codes the JavaScript
// and the base64 text in separate blocks, each with its own tables (about 1 KB smaller).
import wasmBase64, { size as wasmSize } from "livevote:inline";

export { LivevoteError } from "./core.js";

const loadWasm = once(async () => {
  await initWasm({ module_or_path: unlzma(Uint8Array.from(atob(wasmBase64), (char) => char.charCodeAt(0)), wasmSize) });
  return Client;
});

/** Connects to a livevote server; see the package README and `types/index.d.ts`. */
export const connect = makeConnect(loadWasm, async () => undefined);
