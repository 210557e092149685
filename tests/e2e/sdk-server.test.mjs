// The SDK in headless Chromium against the real server binary (target/debug/livevote-server,
// built here if missing), on loopback: snapshot then live totals and votes; the server killed
// and restarted while an event closes (the page reconnects, resubscribes and shows the result);
// a token refreshed in-band before it expires; a revoked token (4001) that stops retrying; a
// `file://` page; Node 20's own experimental WebSocket.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { dist, launchBrowser, MODULE_PAGE, root, serveStatic } from "./sdk-harness.mjs";

const run = promisify(execFile);
const SERVER = join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug", "livevote-server");
const SECRET = "sdk-e2e-secret";

let work;
let browser;
let pages;

before(async () => {
  // Builds the server when needed (a no-op when `cargo xtask test` already built it).
  await run("cargo", ["build", "-p", "livevote-server"], { cwd: root, timeout: 900_000, maxBuffer: 64 * 1024 * 1024 });
  work = await mkdtemp(join(tmpdir(), "livevote-sdk-e2e-"));
  browser = await launchBrowser();
  pages = await serveStatic(dist, { "/test.html": MODULE_PAGE });
});

after(async () => {
  await browser?.close();
  await pages?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Starts the server; resolves once it printed its address. */
async function startServer({ port = 0, database, secret = SECRET, extra = [] }) {
  const child = spawn(
    SERVER,
    [
      "--dev",
      // The file:// page test sends Origin: null, which --dev alone refuses.
      "--allowed-origins", "loopback,null",
      "--listen", `127.0.0.1:${port}`,
      "--database-url", `sqlite://${database}`,
      "--jwt-secret", secret,
      "--initial-balance", "1000",
      "--heartbeat-interval", "1s",
      "--pong-timeout", "1s",
      ...extra,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr = (stderr + chunk).slice(-4000)));
  const url = await new Promise((resolve, reject) => {
    let stdout = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), 30_000);
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      const match = stdout.match(/listening on (http:\/\/[0-9.:]+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${stderr}`));
    });
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  return {
    url,
    port: Number(new URL(url).port),
    /** SIGKILL: no notice, no close frame, as a crash. */
    kill: async () => {
      child.kill("SIGKILL");
      await exited;
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

async function token(server, role, { userId = randomUUID(), ttlSeconds } = {}) {
  const response = await fetch(`${server.url}/api/auth`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ apiKey: "", userId, role, ...(ttlSeconds ? { ttlSeconds } : {}) }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return (await response.json()).token;
}

async function api(server, bearer, method, path, body) {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

async function createEvent(server, streamerId, { closesInMs = 120_000, title = "Will the boss fall?" } = {}) {
  const worker = await token(server, "worker");
  const { event } = await api(server, worker, "POST", "/api/events", {
    streamerId,
    gameId: null,
    title,
    options: [
      { id: "yes", label: "Yes" },
      { id: "no", label: "No" },
    ],
    closesAt: new Date(Date.now() + closesInMs).toISOString(),
    costPerVote: 10,
  });
  return event;
}

/** Opens the module page with a WebSocket that counts sockets, and connects to `server`. */
async function openClient(server, { streamerId, userId = randomUUID(), ttlSeconds, getToken = "mint", extraOptions = {} }) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error("page error:", error));
  await page.addInitScript(() => {
    const Native = window.WebSocket;
    window.socketsOpened = 0;
    window.WebSocket = class CountedWebSocket extends Native {
      constructor(...args) {
        super(...args);
        window.socketsOpened++;
      }
    };
  });
  await page.goto(`${pages.url}/test.html`);
  await page.waitForFunction(() => window.packageLoaded === true);
  const initial = await token(server, "viewer", { userId, ttlSeconds });
  await page.evaluate(
    async ({ url, streamerId, userId, initial, getToken, extraOptions }) => {
      window.record = { status: [], notice: [], stale: [] };
      window.mintToken = async () => {
        const response = await fetch(`${url}/api/auth`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ apiKey: "", userId, role: "viewer", ttlSeconds: 30 }),
        });
        return (await response.json()).token;
      };
      window.tokensAsked = 0;
      const options = {
        url,
        streamerId,
        channels: [`user:${userId}`],
        token: initial,
        heartbeatIntervalMs: 1000,
        pongTimeoutMs: 1000,
        ...extraOptions,
      };
      if (getToken === "mint") options.getToken = () => (window.tokensAsked++, mintToken());
      if (Array.isArray(getToken)) options.getToken = async () => getToken[window.tokensAsked++] || getToken[getToken.length - 1];
      window.client = await livevote.connect(options);
      client.on("status", (status) => record.status.push(status.state));
      client.on("notice", (notice) => record.notice.push(notice.code));
      client.store.subscribe(() => record.stale.push(client.store.getSnapshot().stale));
    },
    { url: server.url, streamerId, userId, initial, getToken, extraOptions },
  );
  return { page, userId, close: () => context.close() };
}

/** Polls `expression` in the page until it is truthy (bounded). */
async function until(page, expression, argument, timeoutMs = 30_000) {
  const handle = await page.waitForFunction(expression, argument, { timeout: timeoutMs, polling: 50 });
  return handle.jsonValue();
}

describe("against the real server", () => {
  test("snapshot then live totals; vote() and the balance", async () => {
    const server = await startServer({ database: join(work, "live.db") });
    const streamerId = randomUUID();
    try {
      const event = await createEvent(server, streamerId);
      const voter = await token(server, "viewer");
      await api(server, voter, "POST", `/api/events/${event.id}/votes`, { optionId: "yes", votes: 2 });
      const client = await openClient(server, { streamerId });
      try {
        const { page } = client;
        await page.evaluate(() => client.ready());
        const first = await until(page, (id) => client.event(id)?.totals.yes === 2 && client.event(id), event.id);
        assert.equal(first.title, "Will the boss fall?");
        assert.equal(first.status, "open");
        await api(server, voter, "POST", `/api/events/${event.id}/votes`, { optionId: "no", votes: 3 });
        const live = await until(page, (id) => client.event(id)?.totals.no === 3 && client.event(id), event.id);
        assert.equal(live.totals.yes, 2);
        assert.ok(live.seq > 0);
        const vote = await page.evaluate((id) => client.vote(id, "yes", 4).then((result) => ({ balance: result.balance, yes: result.totals.yes })), event.id);
        assert.deepEqual(vote, { balance: 1000 - 4 * 10, yes: 6 });
        await until(page, (id) => client.event(id)?.totals.yes === 6, event.id);
        await until(page, () => client.balance() === 960);
        const failure = await page.evaluate(
          (id) => client.vote(id, "yes", 1000).catch((error) => ({ code: error.code, status: error.status, typed: error instanceof livevote.LivevoteError })),
          event.id,
        );
        assert.deepEqual(failure, { code: "INSUFFICIENT_BALANCE", status: 402, typed: true });
        const remaining = await page.evaluate((id) => client.remainingMs(id), event.id);
        assert.ok(remaining > 60_000 && remaining <= 120_000, `remaining ${remaining}`);
        await api(server, await token(server, "worker"), "POST", `/api/events/${event.id}/close`, { optionId: "no" });
        const closed = await until(page, (id) => client.event(id)?.status === "closed" && client.event(id), event.id);
        assert.equal(closed.result.optionId, "no");
        assert.deepEqual({ ...closed.result.totals }, { yes: 6, no: 3 });
        assert.equal(await page.evaluate(() => window.socketsOpened), 1);
      } finally {
        await client.close();
      }
    } finally {
      await server.stop();
    }
  });

  test("the server is killed and restarted while an event closes: the page reconnects, resubscribes and shows the result", async () => {
    const database = join(work, "restart.db");
    let server = await startServer({ database });
    const streamerId = randomUUID();
    const event = await createEvent(server, streamerId, { closesInMs: 2_500 });
    const stays = await createEvent(server, streamerId, { title: "Still open after the restart" });
    const voter = await token(server, "viewer");
    await api(server, voter, "POST", `/api/events/${event.id}/votes`, { optionId: "no", votes: 2 });
    const client = await openClient(server, { streamerId });
    const { page } = client;
    const requests = [];
    page.on("request", (request) => requests.push(request.url()));
    try {
      await page.evaluate(() => client.ready());
      await until(page, (id) => client.event(id)?.totals.no === 2, event.id);
      await server.kill();
      const stale = await until(page, (id) => client.store.getSnapshot().stale && client.event(id).stale && client.status().state !== "live" && client.event(id), event.id);
      assert.equal(stale.status, "open", "the old state stays visible, marked stale");
      // Down past the event's closing time; back on the same port, file and secret. A tiny
      // recent-closed window leaves the event out of the fresh snapshot, so the client must
      // fetch its final state from GET /api/events/{id}.
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      server = await startServer({ database, port: server.port, extra: ["--recent-closed", "1ms"] });
      const closed = await until(page, (id) => client.event(id)?.status === "closed" && client.event(id), event.id, 60_000);
      assert.equal(closed.result.optionId, "no");
      assert.equal(closed.totals.no, 2);
      assert.equal(closed.stale, false);
      await until(page, () => client.status().state === "live" && !client.store.getSnapshot().stale);
      assert.ok(requests.some((url) => url.endsWith(`/api/events/${event.id}`)), "the final state came over HTTP");
      const record = await page.evaluate(() => window.record);
      assert.ok(record.status.includes("reconnecting"));
      assert.equal(record.status.at(-1), "live");
      // Live again: a vote on the event that stayed open reaches the page.
      await api(server, voter, "POST", `/api/events/${stays.id}/votes`, { optionId: "yes", votes: 1 });
      const open = await until(page, (id) => client.event(id)?.totals.yes === 1 && client.event(id), stays.id);
      assert.equal(open.stale, false);
    } finally {
      await client.close();
      await server.stop();
    }
  });

  test("SIGTERM: SERVER_RESTARTING, close 1012, the page comes back by itself", async () => {
    const database = join(work, "sigterm.db");
    let server = await startServer({ database });
    const streamerId = randomUUID();
    const event = await createEvent(server, streamerId);
    const client = await openClient(server, { streamerId });
    const { page } = client;
    try {
      await page.evaluate(() => client.ready());
      await server.stop();
      await until(page, () => record.notice.includes("SERVER_RESTARTING") && client.status().closeCode === 1012);
      server = await startServer({ database, port: server.port });
      await until(page, () => client.status().state === "live" && !client.store.getSnapshot().stale, undefined, 60_000);
      const voter = await token(server, "viewer");
      await api(server, voter, "POST", `/api/events/${event.id}/votes`, { optionId: "yes", votes: 1 });
      await until(page, (id) => client.event(id)?.totals.yes === 1, event.id);
    } finally {
      await client.close();
      await server.stop();
    }
  });

  test("an expiring token is refreshed in-band, without reconnecting", async () => {
    const server = await startServer({ database: join(work, "refresh.db") });
    const streamerId = randomUUID();
    try {
      const event = await createEvent(server, streamerId);
      // Lives 5 s: TOKEN_EXPIRING comes at 4.5 s; without a refresh the socket closes with 4002.
      const client = await openClient(server, { streamerId, ttlSeconds: 5 });
      const { page } = client;
      try {
        await page.evaluate(() => client.ready());
        await until(page, () => record.notice.includes("TOKEN_REFRESHED"), undefined, 20_000);
        await new Promise((resolve) => setTimeout(resolve, 2_000)); // past the first token's expiry
        const voter = await token(server, "viewer");
        await api(server, voter, "POST", `/api/events/${event.id}/votes`, { optionId: "yes", votes: 1 });
        await until(page, (id) => client.event(id)?.totals.yes === 1, event.id);
        const result = await page.evaluate(() => ({ sockets: window.socketsOpened, asked: window.tokensAsked, state: client.status().state, notices: record.notice }));
        assert.equal(result.sockets, 1, "the same socket throughout");
        assert.equal(result.asked, 1);
        assert.equal(result.state, "live");
        assert.ok(result.notices.includes("TOKEN_EXPIRING"));
      } finally {
        await client.close();
      }
    } finally {
      await server.stop();
    }
  });

  test("a revoked token (4001) gets one new token, then the client stops retrying", async () => {
    const database = join(work, "revoked.db");
    let server = await startServer({ database });
    const streamerId = randomUUID();
    const userId = randomUUID();
    // The page's backend keeps handing out tokens signed with the old secret.
    const stale = await token(server, "viewer", { userId });
    const client = await openClient(server, { streamerId, userId, getToken: [stale] });
    const { page } = client;
    try {
      await page.evaluate(() => client.ready());
      await server.kill();
      server = await startServer({ database, port: server.port, secret: "a-new-secret" });
      const status = await until(
        page,
        () => client.status().state === "closed" && { code: client.status().error.code, closeCode: client.status().closeCode },
        undefined,
        60_000,
      );
      assert.deepEqual(status, { code: "UNAUTHORIZED", closeCode: 4001 });
      const before = await page.evaluate(() => ({ sockets: window.socketsOpened, asked: window.tokensAsked }));
      assert.equal(before.asked, 1, "exactly one new token was tried");
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      assert.equal(await page.evaluate(() => window.socketsOpened), before.sockets, "no retry after the stop");
    } finally {
      await client.close();
      await server.stop();
    }
  });

  test("a vote that timed out, retried under its idempotencyKey, counts once", async () => {
    const server = await startServer({ database: join(work, "timeout.db") });
    const streamerId = randomUUID();
    try {
      const event = await createEvent(server, streamerId);
      const client = await openClient(server, { streamerId });
      const { page } = client;
      try {
        await page.evaluate(() => client.ready());
        // 1 ms is too short for any answer: whether the server counted the vote or not, the
        // page cannot know, and a retry under the same key must settle it without a double debit.
        const outcome = await page.evaluate(async (id) => {
          const error = await client.vote(id, "yes", 3, { timeoutMs: 1 }).then(() => null, (error) => error);
          const retried = await client.vote(id, "yes", 3, { idempotencyKey: error && error.idempotencyKey });
          const again = await client.vote(id, "yes", 3, { idempotencyKey: error && error.idempotencyKey });
          return { code: error && error.code, balances: [retried.balance, again.balance], yes: again.totals.yes };
        }, event.id);
        assert.equal(outcome.code, "VOTE_TIMEOUT");
        assert.deepEqual(outcome.balances, [1000 - 3 * 10, 1000 - 3 * 10], "debited once");
        assert.equal(outcome.yes, 3);
        await until(page, (id) => client.event(id)?.totals.yes === 3 && client.balance() === 970, event.id);
        const aborted = await page.evaluate(
          (id) => client.vote(id, "yes", 1, { signal: AbortSignal.abort() }).catch((error) => error.code),
          event.id,
        );
        assert.equal(aborted, "ABORTED");
      } finally {
        await client.close();
      }
    } finally {
      await server.stop();
    }
  });

  test("close() then reconnect() resubscribes; debug logs the kill's close code and the backoff it chose", async () => {
    const database = join(work, "reopen.db");
    let server = await startServer({ database });
    const streamerId = randomUUID();
    const event = await createEvent(server, streamerId);
    const client = await openClient(server, { streamerId, extraOptions: { debug: true, reconnect: { minDelayMs: 200, maxDelayMs: 400, jitter: 0 } } });
    const { page } = client;
    const logs = [];
    const statuses = [];
    page.on("console", (message) => {
      if (message.type() !== "debug") return;
      logs.push(message.text());
      statuses.push(message.args()[3]?.jsonValue().catch(() => undefined));
    });
    try {
      await page.evaluate(() => client.ready());
      await page.evaluate(() => client.close());
      assert.equal(await page.evaluate(() => client.status().state), "closed");
      const voter = await token(server, "viewer");
      await api(server, voter, "POST", `/api/events/${event.id}/votes`, { optionId: "no", votes: 2 });
      await page.evaluate(() => client.reconnect());
      await page.evaluate(() => client.ready());
      // The vote made while closed arrives with the fresh snapshot of the reopened socket.
      await until(page, (id) => client.event(id)?.totals.no === 2 && !client.event(id).stale, event.id);
      assert.equal(await page.evaluate(() => window.socketsOpened), 2);
      await server.kill();
      await until(page, () => client.status().state === "reconnecting");
      server = await startServer({ database, port: server.port });
      await until(page, () => client.status().state === "live", undefined, 30_000);
      await api(server, voter, "POST", `/api/events/${event.id}/votes`, { optionId: "yes", votes: 1 });
      await until(page, (id) => client.event(id)?.totals.yes === 1, event.id);
      const states = logs.map((line) => line.split(" ")[1]);
      const closed = states.indexOf("closed");
      assert.deepEqual(states.slice(closed, closed + 3), ["closed", "connecting", "live"], logs.join("\n"));
      // The kill: no close frame (1006), then the configured 200 ms first delay, no jitter.
      const killed = states.indexOf("reconnecting");
      assert.match(logs[killed], /^livevote: reconnecting retry in (19\d|200) ms/, logs.join("\n"));
      assert.equal((await statuses[killed]).closeCode, 1006);
    } finally {
      await client.close();
      await server.stop();
    }
  });

  test("a file:// page (OBS browser source) loads the package and shows live data", async () => {
    const server = await startServer({ database: join(work, "file.db") });
    const streamerId = randomUUID();
    try {
      const event = await createEvent(server, streamerId, { title: "From a file" });
      const viewer = await token(server, "viewer");
      const overlay = join(work, "overlay.html");
      await writeFile(
        overlay,
        `<!doctype html><meta charset="utf-8"><div id="out">loading</div>
         <script src="${pathToFileURL(join(dist, "livevote.global.js")).href}"></script>
         <script>
           livevote.connect({ url: ${JSON.stringify(server.url)}, streamerId: ${JSON.stringify(streamerId)}, token: ${JSON.stringify(viewer)},
                              heartbeatIntervalMs: 1000, pongTimeoutMs: 1000 })
             .then((client) => {
               window.client = client;
               client.on("event", (event) => { document.getElementById("out").textContent = event.title + ": " + event.totals.yes; });
             });
         </script>`,
      );
      const context = await browser.newContext();
      try {
        const page = await context.newPage();
        await page.goto(pathToFileURL(overlay).href);
        await page.waitForFunction(() => document.getElementById("out").textContent === "From a file: 0", null, { timeout: 30_000 });
        await api(server, viewer, "POST", `/api/events/${event.id}/votes`, { optionId: "yes", votes: 1 });
        await page.waitForFunction(() => document.getElementById("out").textContent === "From a file: 1", null, { timeout: 30_000 });
        await page.evaluate(() => window.client.close());
      } finally {
        await context.close();
      }
    } finally {
      await server.stop();
    }
  });

  test("Node 20 with its experimental WebSocket", async () => {
    const server = await startServer({ database: join(work, "node.db") });
    const streamerId = randomUUID();
    try {
      const event = await createEvent(server, streamerId, { title: "From Node" });
      const viewer = await token(server, "viewer");
      const script = join(work, "node-client.mjs");
      await writeFile(
        script,
        `import { connect } from ${JSON.stringify(pathToFileURL(join(dist, "node.js")).href)};
         const client = await connect({ url: ${JSON.stringify(server.url)}, streamerId: ${JSON.stringify(streamerId)}, token: ${JSON.stringify(viewer)}, heartbeatIntervalMs: 1000, pongTimeoutMs: 1000 });
         await client.ready();
         const event = client.event(${JSON.stringify(event.id)});
         client.close();
         console.log(JSON.stringify({ title: event.title, state: client.status().state }));`,
      );
      const { stdout } = await run(process.execPath, ["--experimental-websocket", "--no-warnings", script], { timeout: 30_000 });
      assert.deepEqual(JSON.parse(stdout.trim()), { title: "From Node", state: "closed" });
    } finally {
      await server.stop();
    }
  });
});
