// The entry Node resolves: the inlined wasm of the default entry, and the `ws` package as the
// WebSocket when Node has none of its own (Node 20) and the options pass none.
// Imported first so that the bundle starts with the inlined text (npm/build.mjs moves it there
// in the module bundles, where the minifier puts it at its use): gzip then codes most of the
// base64 text and most of the JavaScript in blocks of their own.
import wasmBase64, { size as wasmSize } from "livevote:inline";
import initWasm, { Client } from "livevote:glue";
import { makeConnect, once } from "./core.js";
import { guardConnect, guardWasm } from "./failures.js";
import { unlzma } from "./unlzma.js";

export { LivevoteError } from "./core.js";

const loadWasm = once(guardWasm(async () => {
  await initWasm({ module_or_path: unlzma(Uint8Array.from(atob(wasmBase64), (char) => char.charCodeAt(0)), wasmSize) });
  return Client;
}));

async function loadWs() {
  try {
    const ws = await import("ws");
    return ws.WebSocket || ws.default;
  } catch (error) {
    return undefined;
  }
}

/** Connects to a livevote server; see the package README and `types/index.d.ts`. */
export const connect = guardConnect(makeConnect(loadWasm, loadWs));
