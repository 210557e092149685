// Helpers for the SDK's browser tests (no tests here): headless Chromium through
// playwright-core (the system's /usr/bin/chromium, nothing downloaded), a static file server
// on loopback, and a scripted in-page WebSocket that lets a test play the server exactly.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = fileURLToPath(new URL("../..", import.meta.url));
export const dist = join(root, "npm", "dist");

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-dev-shm-usage",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
}

const TYPES = {
  ".html": "text/html",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".wasm": "application/wasm",
  ".json": "application/json",
};

/**
 * Serves `folder` on 127.0.0.1 (a free port), plus `pages` (path → HTML text) and
 * `handler(request, response)` for anything it answers first (return true when handled).
 */
export async function serveStatic(folder, pages = {}, handler = async () => false) {
  const server = createServer(async (request, response) => {
    try {
      if (await handler(request, response)) return;
      const path = decodeURIComponent(new URL(request.url, "http://x").pathname);
      if (pages[path] !== undefined) {
        response.writeHead(200, { "content-type": "text/html" });
        response.end(pages[path]);
        return;
      }
      const file = normalize(join(folder, path));
      if (!file.startsWith(folder)) throw new Error("outside");
      const body = await readFile(file);
      response.writeHead(200, { "content-type": TYPES[extname(file)] || "application/octet-stream" });
      response.end(body);
    } catch {
      response.writeHead(404);
      response.end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

/**
 * Installed in the page before any script: a WebSocket the test drives as the server, and
 * counters of the timers and page listeners alive (to prove close() leaves none).
 */
export const PAGE_INSTRUMENTS = `
(() => {
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedByClient = null;
      FakeWebSocket.sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }
    close(code) {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      this.closedByClient = code === undefined ? 1005 : code;
    }
    // The server's side.
    open() { this.readyState = 1; if (this.onopen) this.onopen({ type: "open" }); }
    receive(message) {
      const data = typeof message === "string" ? message : JSON.stringify(message);
      if (this.onmessage) this.onmessage({ type: "message", data });
    }
    serverClose(code) { this.readyState = 3; if (this.onclose) this.onclose({ type: "close", code, reason: "" }); }
    commands(action) { return this.sent.filter((command) => command.action === action); }
  }
  FakeWebSocket.sockets = [];
  FakeWebSocket.CONNECTING = 0; FakeWebSocket.OPEN = 1; FakeWebSocket.CLOSING = 2; FakeWebSocket.CLOSED = 3;
  window.FakeWebSocket = FakeWebSocket;
  window.lastSocket = () => FakeWebSocket.sockets[FakeWebSocket.sockets.length - 1];
  window.openSockets = () => FakeWebSocket.sockets.filter((socket) => socket.readyState < 2 && socket.closedByClient === null);

  const alive = { timeouts: new Set(), intervals: new Set(), listeners: new Set() };
  window.alive = alive;
  const { setTimeout: originalSetTimeout, clearTimeout: originalClearTimeout, setInterval: originalSetInterval, clearInterval: originalClearInterval } = window;
  window.setTimeout = function (callback, delay, ...rest) {
    const id = originalSetTimeout(function () { alive.timeouts.delete(id); if (typeof callback === "function") callback.apply(this, arguments); }, delay, ...rest);
    alive.timeouts.add(id);
    return id;
  };
  window.clearTimeout = (id) => { alive.timeouts.delete(id); originalClearTimeout(id); };
  window.setInterval = function (callback, delay, ...rest) {
    const id = originalSetInterval(callback, delay, ...rest);
    alive.intervals.add(id);
    return id;
  };
  window.clearInterval = (id) => { alive.intervals.delete(id); originalClearInterval(id); };
  for (const target of [window, document]) {
    const add = target.addEventListener.bind(target);
    const remove = target.removeEventListener.bind(target);
    target.addEventListener = (type, listener, options) => { alive.listeners.add(listener); add(type, listener, options); };
    target.removeEventListener = (type, listener, options) => { alive.listeners.delete(listener); remove(type, listener, options); };
  }
  window.aliveCounts = () => ({ timeouts: alive.timeouts.size, intervals: alive.intervals.size, listeners: alive.listeners.size });
  window.waitFor = async (condition, what, timeoutMs = 10000) => {
    const start = Date.now();
    for (;;) {
      const value = await condition();
      if (value) return value;
      if (Date.now() - start > timeoutMs) throw new Error("timed out waiting for " + what);
      await new Promise((resolve) => originalSetTimeout(resolve, 10));
    }
  };
})();
`;

/** A page that imports the package's default entry as `window.livevote`. */
export const MODULE_PAGE = `<!doctype html><meta charset="utf-8"><title>livevote test</title>
<script type="module">
  import * as livevote from "/index.js";
  window.livevote = livevote;
  window.packageLoaded = true;
</script>`;

/** Minimal valid payloads for scripted servers. */
export function eventPayload(id, streamerId, { closesInMs = 60_000, options = ["yes", "no"], title = "Will it work?" } = {}) {
  return {
    id,
    streamerId,
    gameId: null,
    title,
    options: options.map((option) => ({ id: option, label: option.toUpperCase() })),
    closesAt: new Date(Date.now() + closesInMs).toISOString(),
    costPerVote: 10,
  };
}
