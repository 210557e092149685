// What the framework entries (livevote/react, livevote/vue) share: the snapshot shown before a
// client exists (on the server, during hydration, while the wasm loads), and one shared,
// lazily started connection per provider that survives a mount/unmount/mount within a tick
// (React StrictMode, Vue's KeepAlive juggling) without opening a second socket.
import { connect, LivevoteError } from "livevote";

const freeze = Object.freeze;

/** The state of a client that is not there yet: what a server renders and a page hydrates. */
export const CONNECTING = freeze({
  status: freeze({ state: "connecting", attempt: 0, retryAt: null, closeCode: null, error: null }),
  stale: false,
  events: freeze([]),
  balance: null,
  channels: freeze({}),
});

/** The snapshot of a connect() that failed: closed, with its error, like a client the server stopped. */
const failed = (error) =>
  freeze({
    ...CONNECTING,
    status: freeze({ ...CONNECTING.status, state: "closed", error: error instanceof LivevoteError ? error : new LivevoteError("INTERNAL", String(error), { cause: error }) }),
  });

/**
 * A connection shared by everyone who holds it. `source` is either connect()'s options (the
 * connection then belongs to this object: opened on the first hold(), closed one tick after
 * the last release) or an existing client (never closed here).
 */
export function sharedConnection(source) {
  const owned = !source || typeof source.on !== "function";
  let client = owned ? null : source;
  let snapshot = client ? client.store.getSnapshot() : CONNECTING;
  let holders = 0;
  let starting = false;
  let closing = null;
  let stopListening = null;
  const listeners = new Set();

  const changed = () => {
    const next = client ? client.store.getSnapshot() : snapshot;
    if (next === snapshot && client) return;
    snapshot = next;
    for (const listener of [...listeners]) listener(snapshot);
  };
  const adopt = (created) => {
    client = created;
    stopListening = created.on("store", changed);
    changed();
  };
  const closeNow = () => {
    closing = null;
    if (holders) return;
    if (stopListening) stopListening();
    stopListening = null;
    if (owned && client) client.close();
    if (owned) {
      client = null;
      snapshot = CONNECTING;
    }
  };

  const api = {
    /** Starts (or keeps) the connection; in a browser only: call it from an effect. */
    hold() {
      holders += 1;
      clearTimeout(closing);
      closing = null;
      if (client && !stopListening) adopt(client);
      if (client || starting || !owned) return;
      starting = true;
      connect(source).then(
        (created) => {
          starting = false;
          if (holders) adopt(created);
          else created.close();
        },
        (error) => {
          starting = false;
          snapshot = failed(error);
          for (const listener of [...listeners]) listener(snapshot);
        },
      );
    },
    /** Lets go; the connection closes one tick later unless someone holds it again by then. */
    release() {
      holders -= 1;
      if (!holders && !closing) closing = setTimeout(closeNow, 0);
    },
    /** Calls `listener(snapshot)` after every change; returns the function that stops it. */
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    getSnapshot: () => snapshot,
    client: () => client,
  };
  return api;
}
