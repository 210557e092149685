// The SDK in headless Chromium against a scripted server: the page's WebSocket is a fake the
// test drives message by message, so every rule of the contract's client side (close codes,
// resubscribe, stale-while-resync, seq, tokens, clock, close() hygiene, heap) is checked
// exactly, without timing luck. The real server is exercised in sdk-server.test.mjs.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { dist, eventPayload, launchBrowser, MODULE_PAGE, PAGE_INSTRUMENTS, serveStatic } from "./sdk-harness.mjs";

const STREAMER = "a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d";
const USER = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
const EVENT_A = "3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01";
const EVENT_B = "7e6d5c4b-3a29-4818-a7f6-e5d4c3b2a190";

let browser;
let server;

before(async () => {
  browser = await launchBrowser();
  server = await serveStatic(dist, { "/test.html": MODULE_PAGE });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** A fresh page with the package loaded and helpers installed. */
async function openPage() {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error("page error:", error));
  await page.addInitScript(PAGE_INSTRUMENTS);
  await page.goto(`${server.url}/test.html`);
  await page.waitForFunction(() => window.packageLoaded === true);
  await page.evaluate(
    ([STREAMER, USER, eventPayloadSource]) => {
      window.STREAMER = STREAMER;
      window.USER = USER;
      window.eventPayload = new Function(`return (${eventPayloadSource})`)();
      // Connects with the fake socket; short heartbeat so liveness tests stay quick.
      window.start = async (options = {}) => {
        window.tokens = 0;
        window.client = await livevote.connect({
          url: location.origin,
          token: "token-0",
          getToken: async () => "token-" + ++window.tokens,
          streamerId: STREAMER,
          WebSocket: FakeWebSocket,
          heartbeatIntervalMs: 400,
          pongTimeoutMs: 400,
          ...options,
        });
        window.seen = { event: [], status: [], notice: [], balance: [], remove: [], store: 0 };
        for (const topic of ["event", "status", "notice", "balance", "remove"]) {
          client.on(topic, (value) => window.seen[topic].push(value));
        }
        client.store.subscribe(() => window.seen.store++);
        return client;
      };
      // Plays a server answering the socket's subscribe command with `frames` then SUBSCRIBED.
      window.serveSnapshot = async (socket, frames) => {
        await waitFor(() => socket.commands("subscribe").length > 0, "a subscribe command");
        const channels = socket.commands("subscribe").at(-1).channels;
        for (const frame of frames) socket.receive(frame);
        socket.receive({ type: "SUBSCRIBED", payload: { channels } });
      };
      window.created = (id, options) => ({ type: "EVENT_CREATED", payload: { event: eventPayload(id, STREAMER, options) } });
      window.updated = (id, seq, totals, closesAt = null) => ({ type: "EVENT_UPDATED", payload: { eventId: id, seq, totals, closesAt } });
      window.closedMessage = (id, optionId, totals) => ({ type: "EVENT_CLOSED", payload: { eventId: id, result: { optionId, totals } } });
      // Connects and brings the first socket live with event A open.
      window.startLive = async (options) => {
        await start(options);
        const socket = await waitFor(() => window.lastSocket(), "a socket");
        socket.open();
        await serveSnapshot(socket, [created(window.EVENT_A), updated(window.EVENT_A, 1, { yes: 3, no: 1 })]);
        await client.ready();
        return socket;
      };
    },
    [STREAMER, USER, eventPayload.toString()],
  );
  await page.evaluate(([a, b]) => { window.EVENT_A = a; window.EVENT_B = b; }, [EVENT_A, EVENT_B]);
  return page;
}

async function withPage(body) {
  const page = await openPage();
  try {
    return await body(page);
  } finally {
    await page.evaluate(() => window.client && window.client.close()).catch(() => {});
    await page.context().close();
  }
}

describe("scripted server", () => {
  test("snapshot then live totals, single and batched frames", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const socket = await startLive();
        const first = client.event(EVENT_A);
        const snapshot = client.store.getSnapshot();
        const sameSnapshot = client.store.getSnapshot() === snapshot;
        socket.receive([created(EVENT_B), updated(EVENT_A, 2, { yes: 5, no: 1 }), updated(EVENT_B, 1, { yes: 1, no: 0 })]);
        socket.receive(updated(EVENT_A, 3, { yes: 9, no: 2 }));
        const later = client.store.getSnapshot();
        return {
          url: socket.url,
          subscribe: socket.commands("subscribe"),
          first,
          status: client.status().state,
          sameSnapshot,
          changedSnapshot: later !== snapshot,
          frozen: Object.isFrozen(later) && Object.isFrozen(later.events) && Object.isFrozen(later.events[0].totals),
          events: client.events().map((event) => [event.id, event.totals.yes, event.seq, event.status]),
          unchangedIdentity: later.events[1] === client.event(EVENT_B),
          channels: client.channels(),
        };
      });
      assert.match(result.url, /^ws:\/\/127\.0\.0\.1:\d+\/realtime\?token=token-0$/);
      assert.deepEqual(result.subscribe, [{ action: "subscribe", channels: [`streamer:${STREAMER}`] }]);
      assert.equal(result.first.title, "Will it work?");
      assert.deepEqual({ ...result.first.totals }, { yes: 3, no: 1 });
      assert.equal(result.first.status, "open");
      assert.equal(result.first.stale, false);
      assert.equal(result.status, "live");
      assert.ok(result.sameSnapshot, "getSnapshot is stable while nothing changes");
      assert.ok(result.changedSnapshot);
      assert.ok(result.frozen);
      assert.deepEqual(result.events, [
        [EVENT_A, 9, 3, "open"],
        [EVENT_B, 1, 1, "open"],
      ]);
      assert.ok(result.unchangedIdentity);
      assert.deepEqual(result.channels, { [`streamer:${STREAMER}`]: "subscribed" });
    }));

  test("updates apply only when seq is newer and never after EVENT_CLOSED", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const socket = await startLive();
        socket.receive(updated(EVENT_A, 5, { yes: 50, no: 0 }));
        socket.receive(updated(EVENT_A, 4, { yes: 40, no: 0 }));
        const afterStale = client.event(EVENT_A).totals.yes;
        socket.receive(closedMessage(EVENT_A, "yes", { yes: 51, no: 0 }));
        socket.receive(updated(EVENT_A, 6, { yes: 60, no: 0 }));
        socket.receive(closedMessage(EVENT_A, "no", { yes: 0, no: 1 }));
        return { afterStale, final: client.event(EVENT_A) };
      });
      assert.equal(result.afterStale, 50);
      assert.equal(result.final.status, "closed");
      assert.deepEqual({ ...result.final.result.totals }, { yes: 51, no: 0 });
      assert.equal(result.final.result.optionId, "yes");
      assert.equal(result.final.totals.yes, 51);
    }));

  test("PING is answered from inside the message handler and sets the server clock", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const socket = await startLive();
        const ahead = 3_600_000;
        socket.receive({ type: "PING", payload: { ts: new Date(Date.now() + ahead).toISOString() } });
        // Synchronously after the frame: no timer may stand between a PING and its pong.
        const pongs = socket.commands("pong").length;
        socket.receive(created(EVENT_B, { closesInMs: ahead + 60_000 }));
        return {
          pongs,
          offset: client.serverNow() - Date.now(),
          remaining: client.remainingMs(client.event(EVENT_B)),
          remainingById: client.remainingMs(EVENT_B),
          unknown: client.remainingMs("00000000-0000-4000-8000-000000000000"),
        };
      });
      assert.equal(result.pongs, 1);
      assert.ok(Math.abs(result.offset - 3_600_000) < 2_000, `offset ${result.offset}`);
      // The event's closesAt is computed from Date.now() a moment after the PING's ts, so the
      // countdown may read a few milliseconds over 60 s; it must never read the local clock's
      // hour-off value.
      assert.ok(result.remaining > 55_000 && result.remaining <= 60_050, `remaining ${result.remaining}`);
      assert.ok(result.remainingById > 55_000);
      assert.ok(Number.isNaN(result.unknown));
    }));

  test("a silent connection is declared dead and replaced, never two sockets at once", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const first = await startLive();
        let mostOpen = 0;
        const watch = setInterval(() => (mostOpen = Math.max(mostOpen, openSockets().length)), 5);
        // The fake server stops talking: no frame for heartbeat + pong timeout (800 ms).
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a new socket");
        clearInterval(watch);
        return { closedByClient: first.closedByClient, mostOpen, state: client.status().state, stale: client.store.getSnapshot().stale };
      });
      assert.equal(result.closedByClient, 1000, "the dead socket is closed by the client");
      assert.ok(result.mostOpen <= 1, `at most one socket alive, saw ${result.mostOpen}`);
      assert.equal(result.stale, true);
    }));

  test("after a reconnect: resubscribes once, keeps the old state visible and stale, swaps on SUBSCRIBED, verifies vanished events", () =>
    withPage(async (page) => {
      await page.route("**/api/events/*", (route) => {
        const id = route.request().url().split("/").pop();
        assert.equal(route.request().headers().authorization, "Bearer token-0");
        if (id === EVENT_B) {
          route.fulfill({
            status: 200,
            contentType: "application/json",
            body: JSON.stringify({
              event: eventPayload(EVENT_B, STREAMER),
              status: "closed",
              totals: { yes: 7, no: 8 },
              result: { optionId: "no", totals: { yes: 7, no: 8 } },
            }),
          });
        } else {
          route.fulfill({ status: 404, contentType: "application/json", body: '{"error":{"code":"NOT_FOUND","message":"no"}}' });
        }
      });
      const result = await page.evaluate(async () => {
        const first = await startLive({ channels: [`user:${USER}`] });
        first.receive([created(EVENT_B), updated(EVENT_B, 4, { yes: 2, no: 2 }), { type: "BALANCE_UPDATED", payload: { balance: 500 } }]);
        first.serverClose(1006);
        const during = {};
        during.status = client.status().state;
        during.stale = client.store.getSnapshot().stale;
        during.eventA = client.event(EVENT_A);
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a new socket");
        second.open();
        await waitFor(() => second.commands("subscribe").length > 0, "resubscribe");
        // The fresh snapshot: A with new totals and a lower seq (a restarted server counts
        // anew), B missing (it closed meanwhile and left the recent-closed window).
        second.receive(created(EVENT_A));
        second.receive(updated(EVENT_A, 1, { yes: 30, no: 10 }));
        second.receive({ type: "BALANCE_UPDATED", payload: { balance: 450 } });
        during.beforeSubscribed = { stale: client.store.getSnapshot().stale, eventA: client.event(EVENT_A).totals.yes, balance: client.balance() };
        second.receive({ type: "SUBSCRIBED", payload: { channels: second.commands("subscribe")[0].channels } });
        const afterSwap = { stale: client.store.getSnapshot().stale, eventA: client.event(EVENT_A), status: client.status().state, balance: client.balance() };
        const eventB = await waitFor(() => client.event(EVENT_B)?.status === "closed" && client.event(EVENT_B), "B's final state");
        second.receive(updated(EVENT_A, 2, { yes: 31, no: 10 }));
        return { during, afterSwap, eventB, subscribes: second.commands("subscribe"), eventA: client.event(EVENT_A).totals.yes };
      });
      assert.equal(result.during.status, "reconnecting");
      assert.equal(result.during.stale, true);
      assert.equal(result.during.eventA.stale, true);
      assert.equal(result.during.eventA.totals.yes, 3, "the old totals stay visible");
      assert.deepEqual(result.subscribes, [{ action: "subscribe", channels: [`streamer:${STREAMER}`, `user:${USER}`] }]);
      assert.deepEqual(result.during.beforeSubscribed, { stale: true, eventA: 3, balance: 500 }, "nothing swaps before SUBSCRIBED");
      assert.equal(result.afterSwap.stale, false);
      assert.equal(result.afterSwap.status, "live");
      assert.equal(result.afterSwap.eventA.totals.yes, 30);
      assert.equal(result.afterSwap.eventA.stale, false);
      assert.equal(result.afterSwap.balance, 450);
      assert.equal(result.eventB.result.optionId, "no");
      assert.equal(result.eventB.stale, false);
      assert.equal(result.eventA, 31, "updates after the swap apply with the new connection's seq");
    }));

  test("frames from a superseded socket are dropped", () =>
    withPage(async (page) => {
      const totals = await page.evaluate(async () => {
        const first = await startLive();
        // Declared dead by the client (no frame in time) while the server still talks on it.
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a new socket");
        second.open();
        await serveSnapshot(second, [created(EVENT_A), updated(EVENT_A, 1, { yes: 4, no: 4 })]);
        first.readyState = 1;
        first.receive(updated(EVENT_A, 99, { yes: 999, no: 0 }));
        first.serverClose(1006);
        return { yes: client.event(EVENT_A).totals.yes, handlers: [first.onopen, first.onmessage, first.onclose].map((handler) => typeof handler), state: client.status().state };
      });
      assert.equal(totals.yes, 4);
      assert.deepEqual(totals.handlers, ["undefined", "undefined", "undefined"], "the retired socket is unhooked");
      assert.equal(totals.state, "live", "its close does not disturb the new one");
    }));

  for (const code of [4000, 4009, 1006, 1009, 1001, 1011]) {
    test(`close ${code} reconnects with backoff`, () =>
      withPage(async (page) => {
        const result = await page.evaluate(async (code) => {
          const first = await startLive();
          const closedAt = Date.now();
          first.serverClose(code);
          const status = client.status();
          const second = await waitFor(() => FakeWebSocket.sockets[1], "a new socket");
          return { state: status.state, waitMs: status.retryAt - closedAt, closeCode: status.closeCode, url: second.url };
        }, code);
        assert.equal(result.state, "reconnecting");
        assert.equal(result.closeCode, code);
        assert.ok(result.waitMs >= 0 && result.waitMs <= 600, `first retry within the first backoff step: ${result.waitMs}`);
        assert.match(result.url, /token=token-0$/, "the token is still good");
      }));
  }

  for (const code of [1000, 4003]) {
    test(`close ${code} stops for good`, () =>
      withPage(async (page) => {
        const result = await page.evaluate(async (code) => {
          const first = await startLive();
          const baseline = aliveCounts();
          first.serverClose(code);
          const ready = await client.ready().then(() => "resolved", (error) => error.code);
          await new Promise((resolve) => setTimeout(resolve, 1500));
          const status = client.status();
          return { sockets: FakeWebSocket.sockets.length, status: { ...status, error: status.error && status.error.code }, ready, baseline, after: aliveCounts() };
        }, code);
        assert.equal(result.sockets, 1, "no reconnect");
        assert.equal(result.status.state, "closed");
        assert.equal(result.status.closeCode, code);
        if (code === 4003) assert.equal(result.status.error, "FORBIDDEN");
        else assert.equal(result.status.error, null);
        assert.equal(result.ready, code === 4003 ? "FORBIDDEN" : "CLIENT_CLOSED");
        assert.equal(result.after.intervals, result.baseline.intervals - 1, "the liveness tick stopped");
        assert.ok(result.after.timeouts <= result.baseline.timeouts);
        assert.equal(result.after.listeners, result.baseline.listeners - 3, "online, focus and visibilitychange removed");
      }));
  }

  test("1012 waits the retryAfterMs of SERVER_RESTARTING", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const first = await startLive();
        first.receive({ type: "SYSTEM_NOTICE", payload: { code: "SERVER_RESTARTING", message: "restarting", retryAfterMs: 700 } });
        const closedAt = Date.now();
        first.serverClose(1012);
        const retryAt = client.status().retryAt;
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a new socket");
        return { wait: retryAt - closedAt, createdAfter: Date.now() - closedAt, notices: seen.notice.map((notice) => notice.code) };
      });
      assert.ok(result.wait >= 700, `waits at least retryAfterMs: ${result.wait}`);
      assert.ok(result.createdAfter >= 690, `the next socket came after ${result.createdAfter} ms`);
      assert.deepEqual(result.notices, ["SERVER_RESTARTING"]);
    }));

  test("4008 backs off at least 5 s", () =>
    withPage(async (page) => {
      const wait = await page.evaluate(async () => {
        const first = await startLive();
        const closedAt = Date.now();
        first.serverClose(4008);
        return client.status().retryAt - closedAt;
      });
      assert.ok(wait >= 5_000, `waits ${wait} ms`);
    }));

  test("4002 gets a new token, then reconnects", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const first = await startLive();
        first.serverClose(4002);
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a new socket");
        return { url: second.url, tokens: window.tokens };
      });
      assert.equal(result.tokens, 1);
      assert.match(result.url, /token=token-1$/);
    }));

  test("a getToken() that never answers counts as failed after tokenTimeoutMs, and the client asks again", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        let calls = 0;
        const first = await startLive({
          tokenTimeoutMs: 300,
          // The token service hangs once (a promise that never settles), then answers.
          getToken: () => (++calls === 1 ? new Promise(() => {}) : Promise.resolve("token-fresh")),
        });
        first.serverClose(4002);
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a socket after the hung getToken()", 8000);
        let refused;
        try {
          await livevote.connect({ url: location.origin, getToken: async () => "t", tokenTimeoutMs: 0, WebSocket: FakeWebSocket });
        } catch (error) {
          refused = [error.name, error.code];
        }
        return { calls, url: second.url, refused };
      });
      assert.equal(result.calls, 2, "asked once more after the first answer timed out");
      assert.match(result.url, /token=token-fresh$/);
      assert.deepEqual(result.refused, ["LivevoteError", "INVALID_OPTIONS"], "tokenTimeoutMs must be positive");
    }));

  test("4002 without getToken stops with TOKEN_EXPIRED", () =>
    withPage(async (page) => {
      const status = await page.evaluate(async () => {
        const first = await startLive({ getToken: undefined });
        first.serverClose(4002);
        return { state: client.status().state, error: client.status().error.code };
      });
      assert.equal(status.state, "closed");
      assert.equal(status.error, "TOKEN_EXPIRED");
    }));

  test("4001 tries one new token, then stops with UNAUTHORIZED", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const first = await startLive();
        first.serverClose(4001);
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a second socket");
        second.open();
        second.receive({ type: "SYSTEM_NOTICE", payload: { code: "UNAUTHORIZED", message: "invalid token" } });
        second.serverClose(4001);
        const ready = await client.ready().then(() => "resolved", (error) => [error.name, error.code, error instanceof livevote.LivevoteError]);
        await new Promise((resolve) => setTimeout(resolve, 1500));
        const status = client.status();
        return { sockets: FakeWebSocket.sockets.length, url: second.url, tokens: window.tokens, status: { ...status, error: status.error.code }, ready };
      });
      assert.equal(result.tokens, 1);
      assert.match(result.url, /token=token-1$/);
      assert.equal(result.sockets, 2, "no third attempt");
      assert.equal(result.status.state, "closed");
      assert.equal(result.status.error, "UNAUTHORIZED");
      assert.equal(result.status.closeCode, 4001);
      assert.deepEqual(result.ready, ["LivevoteError", "UNAUTHORIZED", true]);
    }));

  test("TOKEN_EXPIRING refreshes the token in-band, on the same socket", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const socket = await startLive();
        socket.receive({ type: "SYSTEM_NOTICE", payload: { code: "TOKEN_EXPIRING", message: "soon" } });
        const refresh = await waitFor(() => socket.commands("refresh")[0], "a refresh command");
        socket.receive({ type: "SYSTEM_NOTICE", payload: { code: "TOKEN_REFRESHED", message: "ok" } });
        return { refresh, sockets: FakeWebSocket.sockets.length, state: client.status().state };
      });
      assert.deepEqual(result.refresh, { action: "refresh", token: "token-1" });
      assert.equal(result.sockets, 1);
      assert.equal(result.state, "live");
    }));

  test("channel states: pending, subscribed, denied; subscribe and unsubscribe later", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        await start({ channels: [`user:${USER}`, "user:00000000-0000-4000-8000-000000000000"] });
        const socket = await waitFor(() => window.lastSocket(), "a socket");
        const pending = client.channels();
        socket.open();
        await waitFor(() => socket.commands("subscribe").length > 0, "subscribe");
        socket.receive({ type: "SYSTEM_NOTICE", payload: { code: "SUBSCRIBE_DENIED", message: "not yours", channel: "user:00000000-0000-4000-8000-000000000000" } });
        socket.receive([created(EVENT_A), { type: "SUBSCRIBED", payload: { channels: [`streamer:${STREAMER}`, `user:${USER}`] } }]);
        await client.ready();
        const settled = client.channels();
        client.subscribe("game:0B1C2D3E-4F5A-4B6C-8D7E-9F0A1B2C3D4E");
        const added = client.channels();
        client.unsubscribe(`streamer:${STREAMER}`);
        return { pending, settled, added, afterUnsubscribe: client.channels(), commands: socket.sent.filter((c) => c.action !== "pong"), events: client.events().length, removed: seen.remove };
      });
      assert.deepEqual(Object.values(result.pending), ["pending", "pending", "pending"]);
      assert.deepEqual(result.settled, {
        [`streamer:${STREAMER}`]: "subscribed",
        [`user:${USER}`]: "subscribed",
        "user:00000000-0000-4000-8000-000000000000": "denied",
      });
      assert.equal(result.added["game:0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"], "pending", "names are canonical");
      assert.equal(result.afterUnsubscribe[`streamer:${STREAMER}`], undefined);
      assert.deepEqual(result.commands.slice(1), [
        { action: "subscribe", channels: ["game:0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"] },
        { action: "unsubscribe", channels: [`streamer:${STREAMER}`] },
      ]);
      assert.equal(result.events, 0, "events no channel carries any more are removed");
      assert.deepEqual(result.removed, [EVENT_A]);
    }));

  test("a channel its SUBSCRIBED answer leaves out counts as denied, not pending forever", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        await start({ channels: [`user:${USER}`] });
        const socket = await waitFor(() => window.lastSocket(), "a socket");
        socket.open();
        await waitFor(() => socket.commands("subscribe").length > 0, "subscribe");
        socket.receive({ type: "SUBSCRIBED", payload: { channels: [`streamer:${STREAMER}`] } });
        await client.ready();
        return { channels: client.channels(), state: client.status().state };
      });
      assert.deepEqual(result.channels, { [`streamer:${STREAMER}`]: "subscribed", [`user:${USER}`]: "denied" });
      assert.equal(result.state, "live");
    }));

  test("vote(): typed errors, balance, one retry with a new token on 401 under the same key", () =>
    withPage(async (page) => {
      const requests = [];
      await page.route("**/api/events/*/votes", async (route) => {
        const request = route.request();
        requests.push({ auth: request.headers().authorization, key: request.headers()["idempotency-key"], body: request.postDataJSON() });
        const { optionId } = request.postDataJSON();
        if (optionId === "broke") {
          return route.fulfill({ status: 402, contentType: "application/json", body: '{"error":{"code":"INSUFFICIENT_BALANCE","message":"not enough"}}' });
        }
        if (request.headers().authorization === "Bearer token-0") {
          return route.fulfill({ status: 401, contentType: "application/json", body: '{"error":{"code":"TOKEN_EXPIRED","message":"expired"}}' });
        }
        return route.fulfill({ status: 200, contentType: "application/json", body: '{"balance":980,"totals":{"yes":2,"no":0}}' });
      });
      const result = await page.evaluate(async () => {
        await startLive();
        const ok = await client.vote(EVENT_A, "yes", 2, { idempotencyKey: "key-1" });
        const failure = await client.vote(EVENT_A, "broke").catch((error) => ({
          isError: error instanceof livevote.LivevoteError,
          name: error.name,
          code: error.code,
          status: error.status,
          message: error.message,
        }));
        return { ok, failure, balance: client.balance(), balances: seen.balance };
      });
      assert.deepEqual({ ...result.ok, totals: { ...result.ok.totals } }, { balance: 980, totals: { yes: 2, no: 0 } });
      assert.deepEqual(result.failure, { isError: true, name: "LivevoteError", code: "INSUFFICIENT_BALANCE", status: 402, message: "not enough" });
      assert.equal(result.balance, 980);
      assert.deepEqual(result.balances, [980]);
      assert.equal(requests[0].auth, "Bearer token-0");
      assert.equal(requests[1].auth, "Bearer token-1");
      assert.equal(requests[0].key, "key-1");
      assert.equal(requests[1].key, "key-1", "the retry keeps its idempotency key");
      assert.deepEqual(requests[1].body, { optionId: "yes", votes: 2 });
      assert.match(requests[2].key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, "a random key when none is given");
    }));

  test("vote() without an answer rejects with NETWORK_ERROR", () =>
    withPage(async (page) => {
      await page.route("**/api/events/*/votes", (route) => route.abort());
      const code = await page.evaluate(async () => {
        await startLive();
        return client.vote(EVENT_A, "yes").catch((error) => error.code);
      });
      assert.equal(code, "NETWORK_ERROR");
    }));

  test("vote() times out with VOTE_TIMEOUT and its key, and a retry under that key is the same vote", () =>
    withPage(async (page) => {
      const requests = [];
      await page.route("**/api/events/*/votes", async (route) => {
        const request = route.request();
        requests.push(request.headers()["idempotency-key"]);
        // The first request hangs (a server that committed the vote but whose answer is lost);
        // the retry is answered.
        if (requests.length === 1) return;
        return route.fulfill({ status: 200, contentType: "application/json", body: '{"balance":990,"totals":{"yes":1,"no":0}}' });
      });
      const result = await page.evaluate(async () => {
        await startLive();
        const started = Date.now();
        const timedOut = await client.vote(EVENT_A, "yes", 1, { timeoutMs: 300 }).catch((error) => ({
          typed: error instanceof livevote.LivevoteError,
          code: error.code,
          key: error.idempotencyKey,
          afterMs: Date.now() - started,
        }));
        const retried = await client.vote(EVENT_A, "yes", 1, { idempotencyKey: timedOut.key });
        const refused = await client.vote(EVENT_A, "yes", 1, { timeoutMs: 0 }).catch((error) => error.code);
        return { timedOut, retried: retried.balance, refused };
      });
      assert.equal(result.timedOut.typed, true);
      assert.equal(result.timedOut.code, "VOTE_TIMEOUT");
      assert.ok(result.timedOut.afterMs >= 290 && result.timedOut.afterMs < 3_000, `timed out after ${result.timedOut.afterMs} ms`);
      assert.match(result.timedOut.key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      assert.equal(result.retried, 990);
      assert.deepEqual(requests, [result.timedOut.key, result.timedOut.key], "the retry went out under the same key");
      assert.equal(result.refused, "INVALID_OPTIONS");
    }));

  test("vote() with an AbortSignal rejects with ABORTED; an aborted signal sends nothing", () =>
    withPage(async (page) => {
      let requests = 0;
      await page.route("**/api/events/*/votes", () => {
        requests++; // never answered: only the abort ends the wait
      });
      const result = await page.evaluate(async () => {
        await startLive();
        const controller = new AbortController();
        const pending = client.vote(EVENT_A, "yes", 1, { signal: controller.signal, timeoutMs: 60_000 }).catch((error) => ({
          code: error.code,
          key: typeof error.idempotencyKey,
          cause: error.cause,
        }));
        await new Promise((resolve) => setTimeout(resolve, 200));
        controller.abort("the viewer left");
        const aborted = await pending;
        const early = await client.vote(EVENT_A, "yes", 1, { signal: AbortSignal.abort() }).catch((error) => error.code);
        await new Promise((resolve) => setTimeout(resolve, 200));
        return { aborted, early };
      });
      assert.deepEqual(result.aborted, { code: "ABORTED", key: "string", cause: "the viewer left" });
      assert.equal(result.early, "ABORTED");
      assert.equal(requests, 1, "the already-aborted vote sent no request");
    }));

  test("reconnect options set the backoff (no jitter: exact delays, doubling to the cap); bad ones are refused", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const first = await startLive({ reconnect: { minDelayMs: 300, maxDelayMs: 500, jitter: 0 } });
        const waits = [];
        let socket = first;
        for (let attempt = 0; attempt < 3; attempt++) {
          const closedAt = Date.now();
          socket.serverClose(1006);
          waits.push(client.status().retryAt - closedAt);
          const count = FakeWebSocket.sockets.length;
          socket = await waitFor(() => FakeWebSocket.sockets[count], "the next socket", 5_000);
        }
        client.close();
        const refused = [];
        for (const reconnect of [{ jitter: 2 }, { minDelayMs: 0 }, { minDelayMs: 1000, maxDelayMs: 10 }, { maxDelayMs: "20s" }, 5]) {
          refused.push(
            await livevote
              .connect({ url: location.origin, token: "t", WebSocket: FakeWebSocket, reconnect })
              .then(() => "connected", (error) => [error.code, error.message]),
          );
        }
        return { waits, refused, sockets: FakeWebSocket.sockets.length };
      });
      // Timers and Date.now() differ by a millisecond or two.
      const near = (value, expected) => value >= expected - 5 && value <= expected + 5;
      assert.ok(near(result.waits[0], 300) && near(result.waits[1], 500) && near(result.waits[2], 500), `waits ${result.waits}`);
      assert.equal(result.refused[0][0], "INVALID_OPTIONS");
      assert.match(result.refused[0][1], /jitter/);
      assert.match(result.refused[1][1], /minDelayMs/);
      assert.match(result.refused[2][1], /maxDelayMs/);
      assert.match(result.refused[3][1], /maxDelayMs/);
      assert.match(result.refused[4][1], /options\.reconnect must be an object/);
      assert.equal(result.sockets, 4, "a refused client opens no socket");
    }));

  test("reconnect() after close() reopens: same channels resubscribed, old state stale until the new snapshot", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const first = await startLive({ channels: [`user:${USER}`] });
        client.close();
        const closed = { state: client.status().state, ready: await client.ready().catch((error) => error.code) };
        client.reconnect();
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a socket after reconnect()");
        const reopening = { state: client.status().state, stale: client.store.getSnapshot().stale, eventStale: client.event(EVENT_A).stale };
        second.open();
        await waitFor(() => second.commands("subscribe").length > 0, "resubscribe");
        const ready = client.ready();
        await serveSnapshot(second, [created(EVENT_A), updated(EVENT_A, 1, { yes: 8, no: 1 })]);
        await ready;
        const live = { state: client.status().state, yes: client.event(EVENT_A).totals.yes, stale: client.store.getSnapshot().stale };
        // Between attempts, reconnect() skips the wait.
        second.serverClose(4000);
        const waiting = client.status().state;
        client.reconnect();
        const third = FakeWebSocket.sockets[2];
        return {
          closed,
          reopening,
          subscribe: second.commands("subscribe"),
          live,
          firstClosedBy: first.closedByClient,
          waiting,
          third: third ? client.status().state : "no third socket",
          ignored: client.reconnect() === undefined && FakeWebSocket.sockets.length === 3,
        };
      });
      assert.deepEqual(result.closed, { state: "closed", ready: "CLIENT_CLOSED" });
      assert.equal(result.firstClosedBy, 1000);
      assert.deepEqual(result.reopening, { state: "connecting", stale: true, eventStale: true });
      assert.deepEqual(result.subscribe, [{ action: "subscribe", channels: [`streamer:${STREAMER}`, `user:${USER}`] }]);
      assert.deepEqual(result.live, { state: "live", yes: 8, stale: false });
      assert.equal(result.waiting, "reconnecting");
      assert.equal(result.third, "connecting", "reconnect() while waiting opens the next socket at once");
      assert.ok(result.ignored, "reconnect() while connecting does nothing");
    }));

  test("debug: the option or localStorage's livevote:debug logs state changes, close codes and retry delays", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const logs = [];
        console.debug = (...parts) => logs.push(parts.map((part) => (typeof part === "object" && part ? { ...part, error: part.error && part.error.code } : part)));
        const socket = await startLive({ debug: true, reconnect: { minDelayMs: 400, jitter: 0 } });
        socket.serverClose(1006);
        const second = await waitFor(() => FakeWebSocket.sockets[1], "a new socket");
        second.open();
        second.receive({ type: "SYSTEM_NOTICE", payload: { code: "MAINTENANCE", message: "soon" } });
        second.serverClose(4003);
        const withOption = logs.splice(0);
        client.close();
        // The flag alone turns it on; debug: false wins over it.
        localStorage.setItem("livevote:debug", "1");
        await startLive();
        const withFlag = logs.splice(0).length;
        client.close();
        logs.length = 0;
        await startLive({ debug: false });
        const overridden = logs.length;
        localStorage.removeItem("livevote:debug");
        return { withOption, withFlag, overridden };
      });
      const lines = result.withOption;
      assert.ok(lines.every((line) => line[0] === "livevote:"), JSON.stringify(lines));
      const states = lines.filter((line) => typeof line[3] === "object").map((line) => line[1]);
      assert.deepEqual(states.slice(0, 2), ["connecting", "live"]);
      const reconnecting = lines.find((line) => line[1] === "reconnecting");
      assert.equal(reconnecting[3].closeCode, 1006);
      assert.match(reconnecting[2], /^retry in (39[5-9]|40\d) ms$/);
      assert.ok(lines.some((line) => line[1] === "notice" && line[2] === "MAINTENANCE"));
      const stopped = lines.find((line) => line[1] === "closed");
      assert.deepEqual([stopped[3].closeCode, stopped[3].error], [4003, "FORBIDDEN"]);
      assert.ok(result.withFlag >= 2, "localStorage livevote:debug turns logging on");
      assert.equal(result.overridden, 0, "debug: false wins over the flag");
    }));

  test("the store topic hands listeners the new snapshot; store.subscribe calls at once (Svelte's contract)", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const socket = await startLive();
        const received = [];
        const off = client.on("store", (snapshot) => received.push(snapshot === client.store.getSnapshot() && snapshot.events[0].totals.yes));
        const fromSubscribe = [];
        const stop = client.store.subscribe((snapshot) => fromSubscribe.push(snapshot.events[0].totals.yes));
        socket.receive(updated(EVENT_A, 2, { yes: 4, no: 1 }));
        off();
        stop();
        socket.receive(updated(EVENT_A, 3, { yes: 5, no: 1 }));
        return { received, fromSubscribe };
      });
      assert.deepEqual(result.received, [4]);
      assert.deepEqual(result.fromSubscribe, [3, 4], "at once with the current snapshot, then after the change");
    }));

  test("close() leaves no timer, socket or page listener behind, even mid-reconnect", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const baseline = aliveCounts();
        const first = await startLive();
        const running = aliveCounts();
        first.serverClose(1006); // a retry timer is now pending, the tick stopped
        const waiting = aliveCounts();
        client.close();
        await new Promise((resolve) => setTimeout(resolve, 50));
        const closed = aliveCounts();
        const socketsBefore = FakeWebSocket.sockets.length;
        await new Promise((resolve) => setTimeout(resolve, 1200));
        return { baseline, running, waiting, closed, socketsBefore, socketsAfter: FakeWebSocket.sockets.length, state: client.status().state };
      });
      assert.ok(result.running.intervals > result.baseline.intervals, "a tick runs while connected");
      assert.ok(result.running.listeners > result.baseline.listeners, "page listeners while connected");
      assert.ok(result.waiting.timeouts > result.baseline.timeouts, "a retry timer while reconnecting");
      assert.deepEqual(result.closed, result.baseline);
      assert.equal(result.socketsAfter, result.socketsBefore, "no socket after close()");
      assert.equal(result.state, "closed");
    }));

  test("close() while getToken() hangs leaves no timer behind", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const baseline = aliveCounts();
        let asked = 0;
        const first = await startLive({ getToken: () => (asked++, new Promise(() => {})) });
        first.serverClose(4002); // asks getToken(), which never answers
        await waitFor(() => asked > 0, "a getToken() call");
        const waiting = aliveCounts();
        client.close();
        await new Promise((resolve) => setTimeout(resolve, 50));
        return { baseline, waiting, closed: aliveCounts(), state: client.status().state };
      });
      assert.ok(result.waiting.timeouts > result.baseline.timeouts, "the wait for getToken() has a timer");
      assert.deepEqual(result.closed, result.baseline);
      assert.equal(result.state, "closed");
    }));

  test("a listener may call back into the client, even close()", () =>
    withPage(async (page) => {
      const result = await page.evaluate(async () => {
        const socket = await startLive();
        const calls = [];
        client.on("event", (event) => {
          calls.push(client.event(event.id).totals.yes);
          if (event.totals.yes === 7) client.close();
        });
        socket.receive([updated(EVENT_A, 2, { yes: 6, no: 0 }), updated(EVENT_A, 3, { yes: 7, no: 0 })]);
        socket.receive(updated(EVENT_A, 4, { yes: 8, no: 0 }));
        return { calls, state: client.status().state, yes: client.event(EVENT_A).totals.yes };
      });
      assert.deepEqual(result.calls, [7]);
      assert.equal(result.state, "closed");
      assert.equal(result.yes, 7);
    }));

  test("JS heap stays flat over 10,000 updates", () =>
    withPage(async (page) => {
      const cdp = await page.context().newCDPSession(page);
      const heap = async () => {
        await cdp.send("HeapProfiler.collectGarbage");
        await cdp.send("HeapProfiler.collectGarbage");
        return (await cdp.send("Runtime.getHeapUsage")).usedSize;
      };
      // Every update goes through a frame, a listener and a fresh snapshot, as a page would see it.
      await page.evaluate(async () => {
        window.socket = await startLive();
        window.seq = 1;
        window.pump = (count) => {
          for (let index = 0; index < count; index++) {
            seq++;
            socket.receive(updated(EVENT_A, seq, { yes: seq, no: seq % 7 }));
            client.store.getSnapshot();
          }
          seen.event.length = 0;
          seen.store = 0;
        };
        pump(1_000);
      });
      const before = await heap();
      for (let round = 0; round < 10; round++) await page.evaluate(() => pump(1_000));
      const after = await heap();
      const state = await page.evaluate(() => client.event(EVENT_A).totals.yes);
      assert.equal(state, 11_001);
      assert.ok(after - before < 512 * 1024, `heap grew by ${after - before} bytes over 10,000 updates`);
    }));
});
