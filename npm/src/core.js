// The package's JavaScript side, shared by every entry: option checks, URLs, the typed error,
// the listeners, the vote() request, and the client object handed to the page. Decisions
// (reconnect, merge, tokens, liveness) live in the wasm `Client`; this file carries them out
// for it (the `host` below: sockets, timers, page events, getToken(), fetch) and reports back.

/** The error every rejection and every stop carries; `code` is the contract's error code. */
export class LivevoteError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = "LivevoteError";
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

const makeError = (code, message, details) => new LivevoteError(code, message, details);

const invalid = (message) => makeError("INVALID_OPTIONS", message);

// Numbered as `Topic` in sdk-wasm/src/client/objects.rs.
const TOPICS = ["event", "remove", "balance", "notice", "status", "store"];
const NOTICE = 3;
const STATUS = 4;
// Numbered as `SocketReport` and `Wake` in sdk-wasm/src/client/work.rs.
const SOCKET_OPENED = 0;
const SOCKET_MESSAGE = 1;
const SOCKET_CLOSED = 2;
const WAKE_CHECK = 0;
const WAKE_RETRY_TIMER = 1;

const noop = () => {};

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
  const host = base.host + base.pathname.replace(/\/realtime\/?$/, "").replace(/\/+$/, "");
  return [(secure ? "https://" : "http://") + host, (secure ? "wss://" : "ws://") + host + "/realtime"];
}

function channelList(value) {
  if (value === undefined) return [];
  return typeof value === "string" ? [value] : Array.from(value);
}

/** Freezes an object and everything inside it (snapshots are shared and compared by identity). */
function deepFreeze(value) {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
}

/** One HTTP request; resolves with [status, parsed JSON body or undefined], rejects when no answer came. */
async function request(method, url, token, body, key, signal) {
  const headers = {};
  if (token) headers.Authorization = "Bearer " + token;
  if (key !== undefined) headers["Idempotency-Key"] = key;
  if (body) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, body, headers, signal });
  let json;
  try {
    json = await response.json();
  } catch {}
  return [response.status, json];
}

/** A random version-4 uuid (`crypto.randomUUID` is missing on insecure origins such as plain-http pages). */
const randomKey = () =>
  "10000000-1000-4000-8000-100000000000".replace(/[018]/g, (digit) => (digit ^ ((Math.random() * 16) >> (digit / 4))).toString(16));

/**
 * Builds the entry's `connect`. `loadWasm()` initialises the wasm once and resolves with its
 * `Client` class; `defaultWebSocket()` finds a WebSocket when the options bring none.
 */
/** How long a getToken() answer may take before it counts as a failure (ms). */
const DEFAULT_TOKEN_TIMEOUT_MS = 10_000;
/** How long vote() waits for its answer (ms). */
const DEFAULT_VOTE_TIMEOUT_MS = 10_000;

/** `localStorage["livevote:debug"]` set to 1, true or on turns debug logging on for the page. */
function debugFlag() {
  try {
    return /^(1|true|on)$/i.test(globalThis.document && globalThis.localStorage.getItem("livevote:debug"));
  } catch {
    return false;
  }
}

export function makeConnect(loadWasm, defaultWebSocket) {
  return async function connect(options) {
    if (!options || typeof options.url !== "string") throw invalid("options.url is required");
    const getToken = typeof options.getToken === "function" ? options.getToken : undefined;
    if (!options.token && !getToken) {
      throw invalid("options.token or options.getToken is required");
    }
    const [apiUrl, socketUrl] = serverUrls(options.url);
    const reconnect = options.reconnect;
    if (reconnect !== undefined && (typeof reconnect !== "object" || reconnect === null)) {
      throw invalid("options.reconnect must be an object");
    }
    // State changes, close codes and reconnect delays, on console.debug.
    const log = (options.debug === undefined ? debugFlag() : options.debug) ? (...parts) => console.debug("livevote:", ...parts) : noop;
    const channels = channelList(options.channels);
    if (options.streamerId) channels.unshift("streamer:" + options.streamerId);
    const Client = await loadWasm();
    const WebSocketImpl = options.WebSocket || globalThis.WebSocket || (await defaultWebSocket());
    if (typeof WebSocketImpl !== "function") {
      throw invalid("no WebSocket here: pass options.WebSocket (in Node 20, install `ws`)");
    }

    // A getToken() that never settles (a token service that hangs) must not stall the client
    // for good: past this long its answer counts as none, and the usual backoff tries again.
    const tokenTimeoutMs = options.tokenTimeoutMs === undefined ? DEFAULT_TOKEN_TIMEOUT_MS : options.tokenTimeoutMs;
    if (!(typeof tokenTimeoutMs === "number" && tokenTimeoutMs > 0)) {
      throw invalid("options.tokenTimeoutMs must be a positive number of milliseconds");
    }
    // getToken()'s answer: a non-empty string, or undefined when it threw, rejected, gave none
    // or took longer than tokenTimeoutMs. close() ends the waits still running, so that it
    // leaves no timer behind.
    const tokenWaits = new Set();
    const fetchToken = async () => {
      const wait = {};
      try {
        const token = await Promise.race([
          getToken(),
          new Promise((resolve) => {
            wait.end = resolve;
            wait.timer = setTimeout(resolve, tokenTimeoutMs);
            tokenWaits.add(wait);
          }),
        ]);
        if (typeof token === "string" && token) return token;
      } catch {
      } finally {
        clearTimeout(wait.timer);
        tokenWaits.delete(wait);
      }
    };
    const endTokenWaits = () => {
      for (const wait of tokenWaits) {
        clearTimeout(wait.timer);
        wait.end();
      }
      tokenWaits.clear();
    };
    const listeners = [];
    const waiters = [];
    const snapshot = () => core.snapshot();
    const closedError = (status) => status.error || makeError("CLIENT_CLOSED", "the client is closed");
    // Settles ready() once live (resolve) or closed (reject).
    const settle = () => {
      const status = snapshot().status;
      if (status.state === "live") for (const [resolve] of waiters.splice(0)) resolve();
      if (status.state === "closed") for (const [, reject] of waiters.splice(0)) reject(closedError(status));
    };
    // online, focus and visibilitychange wake the client to re-check its connection.
    const page = [
      [globalThis, "online"],
      [globalThis, "focus"],
      [globalThis.document, "visibilitychange"],
    ]
      .filter(([target]) => target && typeof target.addEventListener === "function")
      .map(([target, name]) => [target, name, () => core.wake(WAKE_CHECK)]);

    // What the wasm client asks of its surroundings (`Host` in sdk-wasm/src/client/host.rs).
    const host = {
      open(token, generation) {
        const socket = new WebSocketImpl(socketUrl + (socketUrl.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token));
        // Errors are followed by a close event; but Node's `ws` throws an error event that has
        // no listener, so every socket keeps this one, even retired.
        socket.onerror = noop;
        socket.onopen = () => core.socket(generation, SOCKET_OPENED);
        socket.onmessage = (event) => {
          let data;
          if (typeof event.data === "string") {
            try {
              data = JSON.parse(event.data);
            } catch {}
          }
          core.socket(generation, SOCKET_MESSAGE, data);
        };
        socket.onclose = (event) => core.socket(generation, SOCKET_CLOSED, event.code);
        return socket;
      },
      retire(socket) {
        socket.onopen = socket.onmessage = socket.onclose = undefined;
        if (socket.readyState <= 1) {
          try {
            socket.close(1000);
          } catch {}
        }
      },
      send(socket, action, value) {
        try {
          // A send on a socket that is closing fails; its close handler reconnects anyway.
          socket.send(JSON.stringify(action === "refresh" ? { action, token: value } : { action, channels: value }));
        } catch {}
      },
      every: (ms) => setInterval(() => core.wake(WAKE_CHECK), ms),
      after: (ms) => setTimeout(() => core.wake(WAKE_RETRY_TIMER), ms),
      page(listen) {
        for (const [target, name, handler] of page) target[listen ? "addEventListener" : "removeEventListener"](name, handler);
      },
      getToken() {
        Promise.resolve().then(fetchToken).then((token) => core.tokenArrived(token));
      },
      fetchEvent(id, token) {
        request("GET", apiUrl + "/api/events/" + id, token).then(
          ([status, body]) => core.verified(id, status, body),
          () => core.verified(id, 0),
        );
      },
      error: (code, message, closeCode) => makeError(code, message, closeCode === undefined ? undefined : { closeCode }),
      freeze: deepFreeze,
      // `calls` is [topic, argument, topic, argument...]; a listener that throws is reported
      // and does not stop the others.
      emit(calls) {
        const current = listeners.slice();
        for (let index = 0; index < calls.length; index += 2) {
          const value = calls[index + 1];
          if (calls[index] === STATUS) {
            log(value.state, value.retryAt ? "retry in " + (value.retryAt - Date.now()) + " ms" : "", value);
          }
          if (calls[index] === NOTICE) log("notice", value.code, value.message);
          for (const [topic, listener] of current) {
            if (topic === calls[index]) {
              try {
                listener(value);
              } catch (error) {
                console.error("livevote: a listener threw", error);
              }
            }
          }
        }
        if (waiters.length) settle();
      },
    };
    const core = new Client(host, {
      token: options.token,
      getToken,
      channels,
      heartbeatIntervalMs: options.heartbeatIntervalMs,
      pongTimeoutMs: options.pongTimeoutMs,
      reconnect,
    });

    const on = (topic, listener) => {
      if (typeof listener !== "function") throw invalid("a listener must be a function");
      const index = TOPICS.indexOf(topic);
      if (index < 0) throw invalid("unknown topic: use event, remove, balance, notice, status or store");
      const entry = [index, listener];
      listeners.push(entry);
      return () => {
        const at = listeners.indexOf(entry);
        if (at >= 0) listeners.splice(at, 1);
      };
    };

    // POST /api/events/{eventId}/votes. A 401 is retried once with a fresh token from
    // getToken(), under the same idempotency key. Past `timeoutMs`, or when `signal` aborts, it
    // rejects (VOTE_TIMEOUT, ABORTED) and cancels the request; the vote may still have counted,
    // so every error it throws carries the idempotencyKey that makes a retry safe.
    async function vote(eventId, optionId, votes, voteOptions) {
      await undefined;
      if (snapshot().status.state === "closed") throw makeError("CLIENT_CLOSED", "the client is closed");
      const { idempotencyKey, timeoutMs = DEFAULT_VOTE_TIMEOUT_MS, signal } = voteOptions || {};
      if (!(timeoutMs > 0)) throw invalid("vote(): timeoutMs must be positive");
      const url = apiUrl + "/api/events/" + encodeURIComponent(String(eventId)) + "/votes";
      const key = typeof idempotencyKey === "string" ? idempotencyKey : randomKey();
      const details = { idempotencyKey: key };
      const body = JSON.stringify({ optionId: String(optionId), votes: (votes === undefined ? 1 : votes) >>> 0 });
      const controller = new AbortController();
      let fail;
      const stopped = new Promise((resolve, reject) => {
        fail = (error) => {
          reject(error);
          controller.abort();
        };
      });
      const race = (promise) => Promise.race([promise, stopped]);
      // Past 2^31 - 1 ms setTimeout fires at once: such a timeout (or Infinity) means none.
      const timer =
        timeoutMs < 2 ** 31 &&
        setTimeout(() => fail(makeError("VOTE_TIMEOUT", "no answer within " + timeoutMs + " ms (the vote may still count)", details)), timeoutMs);
      const abort = () => fail(makeError("ABORTED", "the vote was aborted", { ...details, cause: signal.reason }));
      if (signal) signal.aborted ? abort() : signal.addEventListener("abort", abort);
      try {
        let token = core.token();
        let renewed = false;
        for (;;) {
          if (!token && !renewed && getToken) {
            token = await race(fetchToken());
            renewed = true;
          }
          let answer;
          try {
            answer = await race(request("POST", url, token, body, key, controller.signal));
          } catch (cause) {
            throw cause instanceof LivevoteError ? cause : makeError("NETWORK_ERROR", "the vote request got no answer", { ...details, cause });
          }
          const [status, json] = answer;
          if (status === 401 && !renewed && getToken) {
            token = undefined;
            continue;
          }
          if (status < 200 || status > 299) {
            const error = json == null ? undefined : json.error;
            const code = error == null ? undefined : error.code;
            throw typeof code === "string"
              ? makeError(code, typeof error.message === "string" ? error.message : "", { status })
              : makeError("HTTP_" + status, "the server answered with an unexpected status", { status });
          }
          if (!core.voted(json, renewed ? token : undefined)) {
            throw makeError("BAD_RESPONSE", "the vote answer was not understood");
          }
          return json;
        }
      } finally {
        clearTimeout(timer);
        if (signal) signal.removeEventListener("abort", abort);
      }
    }

    // Bound functions in a frozen object, so that methods may be passed around as is
    // (`useSyncExternalStore(client.store.subscribe, client.store.getSnapshot)`).
    const client = Object.freeze({
      on,
      store: Object.freeze({
        // Svelte's store contract too: the listener gets the snapshot, at once and after each change.
        subscribe: (listener) => {
          const off = on("store", listener);
          listener(snapshot());
          return off;
        },
        getSnapshot: snapshot,
      }),
      events: () => snapshot().events,
      event: (id) => snapshot().events.find((event) => event.id === id),
      balance: () => snapshot().balance,
      status: () => snapshot().status,
      channels: () => snapshot().channels,
      subscribe: (channels) => core.subscribe(channelList(channels)),
      unsubscribe: (channels) => core.unsubscribe(channelList(channels)),
      vote,
      remainingMs: (event) => core.remainingMs(event),
      serverNow: () => core.serverNow(),
      ready: () =>
        new Promise((resolve, reject) => {
          waiters.push([resolve, reject]);
          settle();
        }),
      close: () => {
        core.close();
        endTokenWaits();
      },
      // Reopens a closed client (same options, every channel resubscribed), or skips the wait
      // of one between attempts.
      reconnect: () => core.reconnect(),
    });
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
