// The package's JavaScript side, shared by every entry: option checks, URLs, the typed error,
// and the client object handed to the page. Decisions (reconnect, merge, tokens) live in the
// wasm `Client`; this file only adapts it to idiomatic, bound methods.

/** The error every rejection and every stop carries; `code` is the contract's error code. */
export class LivevoteError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = "LivevoteError";
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

function makeError(code, message, details) {
  return new LivevoteError(code, message, details);
}

function invalid(message) {
  return new LivevoteError("INVALID_OPTIONS", message);
}

// The server's base URL may be given as http(s) or ws(s), with or without `/realtime`;
// the socket lives at `/realtime`, the HTTP API under `/api`.
function serverUrls(url) {
  const location = globalThis.location;
  let base;
  try {
    base = new URL(url, location && /^https?:/.test(location.protocol) ? location.href : undefined);
  } catch (error) {
    throw invalid("options.url is not a URL: " + url);
  }
  const secure = base.protocol === "https:" || base.protocol === "wss:";
  if (!/^(https?|wss?):$/.test(base.protocol)) throw invalid("options.url must be http(s) or ws(s): " + url);
  const path = base.pathname.replace(/\/realtime\/?$/, "").replace(/\/+$/, "");
  const host = base.host + path;
  return {
    apiUrl: (secure ? "https://" : "http://") + host,
    socketUrl: (secure ? "wss://" : "ws://") + host + "/realtime",
  };
}

function channelList(value) {
  if (value === undefined) return [];
  return typeof value === "string" ? [value] : Array.from(value);
}

// Wraps the wasm client in a frozen object of bound functions, so that methods may be passed
// around as is (`useSyncExternalStore(client.store.subscribe, client.store.getSnapshot)`).
function wrap(core) {
  const listen = (topic, listener) => {
    if (typeof listener !== "function") throw invalid("a listener must be a function");
    const id = core.listen(topic, listener);
    let listening = true;
    return () => {
      if (listening) {
        listening = false;
        core.unlisten(id);
      }
    };
  };
  return Object.freeze({
    on: listen,
    store: Object.freeze({
      subscribe: (listener) => listen("store", listener),
      getSnapshot: () => core.snapshot(),
    }),
    events: () => core.snapshot().events,
    event: (id) => core.snapshot().events.find((event) => event.id === id),
    balance: () => core.snapshot().balance,
    status: () => core.snapshot().status,
    channels: () => core.snapshot().channels,
    subscribe: (channels) => core.subscribe(channelList(channels)),
    unsubscribe: (channels) => core.unsubscribe(channelList(channels)),
    vote: (eventId, optionId, votes, options) =>
      core.vote(String(eventId), String(optionId), votes === undefined ? 1 : votes, options && options.idempotencyKey),
    remainingMs: (event) => core.remainingMs(event),
    serverNow: () => core.serverNow(),
    ready: () => core.ready(),
    close: () => core.close(),
  });
}

/**
 * Builds the entry's `connect`. `loadWasm()` initialises the wasm once and resolves with its
 * `Client` class; `defaultWebSocket()` finds a WebSocket when the options bring none.
 */
export function makeConnect(loadWasm, defaultWebSocket) {
  return async function connect(options) {
    if (!options || typeof options.url !== "string") throw invalid("options.url is required");
    if (!options.token && typeof options.getToken !== "function") {
      throw invalid("options.token or options.getToken is required");
    }
    const urls = serverUrls(options.url);
    const channels = channelList(options.channels);
    if (options.streamerId) channels.unshift("streamer:" + options.streamerId);
    const Client = await loadWasm();
    const WebSocketImpl = options.WebSocket || globalThis.WebSocket || (await defaultWebSocket());
    if (typeof WebSocketImpl !== "function") {
      throw invalid("no WebSocket here: pass options.WebSocket (in Node 20, install `ws`)");
    }
    const core = new Client({
      socketUrl: urls.socketUrl,
      apiUrl: urls.apiUrl,
      token: options.token,
      getToken: options.getToken,
      channels,
      WebSocket: WebSocketImpl,
      heartbeatIntervalMs: options.heartbeatIntervalMs,
      pongTimeoutMs: options.pongTimeoutMs,
      makeError,
    });
    const client = wrap(core);
    core.start();
    return client;
  };
}

/** Runs `init` once; a failed attempt is forgotten so that the next `connect()` tries again. */
export function once(init) {
  let pending = null;
  return () => {
    if (!pending) {
      pending = init().catch((error) => {
        pending = null;
        throw error;
      });
    }
    return pending;
  };
}

/**
 * Turns the inlined wasm back into bytes. It is inlined gzipped, then base64: gzip first so
 * that the page downloads about what the bare .wasm would cost compressed (base64 of raw wasm
 * compresses badly). `atob` and `DecompressionStream` exist in Chrome 80+ and Node 18+.
 */
export async function inflateWasm(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index++) bytes[index] = binary.charCodeAt(index);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
