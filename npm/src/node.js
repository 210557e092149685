// The entry Node resolves: the inlined wasm of the default entry, and the `ws` package as the
// WebSocket when Node has none of its own (Node 20) and the options pass none.
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

async function loadWs() {
  try {
    const ws = await import("ws");
    return ws.WebSocket || ws.default;
  } catch (error) {
    return undefined;
  }
}

/** Connects to a livevote server; see the package README and `types/index.d.ts`. */
export const connect = makeConnect(loadWasm, loadWs);
