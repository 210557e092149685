// End-to-end tests of the examples against a real demo server (`livevote-server --demo`), in
// headless Chromium driven by playwright-core: the OBS overlay shows an event, its bars move, the
// result appears after the close, the reconnect indicator appears while the server is down and
// clears when it is back; the viewer page votes and its balance drops by the cost; the worker
// example creates, re-sends and closes events. Screenshots land in target/screenshots/.
//
// Run with `cargo xtask test examples` (which builds the binaries first), or
// `node --test tests/e2e/examples.mjs` after `cargo build -p livevote-server -p livevote-worker-example`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const root = fileURLToPath(new URL("../..", import.meta.url));
const targetDir = process.env.CARGO_TARGET_DIR || join(root, "target");
const serverBinary = process.env.LIVEVOTE_SERVER_BIN || join(targetDir, "debug", "livevote-server");
const workerBinary = process.env.LIVEVOTE_WORKER_BIN || join(targetDir, "debug", "livevote-worker-example");
const screenshots = join(root, "target", "screenshots");
const STREAMER_ID = "5f1c0a4e-7d1b-4c39-9a55-3d2f6c8e9b10";
// Ten times the real demo's pace: events last 4–12 s and come every 3–6 s.
const PACE = "10";

/** Polls `probe` until it returns something truthy, or fails after `timeoutMs`. */
async function eventually(description, probe, timeoutMs = 20000, intervalMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${description} (last: ${last})`);
}

/** A demo server on loopback; `listen` pins the address for a restart on the same port. */
class DemoServer {
  constructor(databaseUrl) {
    this.databaseUrl = databaseUrl;
    this.child = null;
    this.url = null;
    this.output = "";
  }

  async start(listen = "127.0.0.1:0") {
    assert.ok(existsSync(serverBinary), `${serverBinary} is missing: run cargo build -p livevote-server`);
    const child = spawn(serverBinary, ["--demo", "--listen", listen, "--database-url", this.databaseUrl, "--demo-assets", root], {
      env: { ...process.env, LIVEVOTE_DEMO_PACE: PACE, LIVEVOTE_LOG: process.env.LIVEVOTE_LOG || "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.stdout = "";
    const collect = (chunk) => {
      // Keep the tail only: enough to explain a failure.
      this.output = (this.output + chunk.toString()).slice(-20000);
    };
    child.stderr.on("data", collect);
    this.url = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server did not print its address in 30 s:\n${this.output}`)), 30000);
      child.stdout.on("data", (chunk) => {
        collect(chunk);
        // Standard output is short (the address and the demo's URLs): keep all of it.
        this.stdout = (this.stdout + chunk.toString()).slice(-100000);
        const match = /listening on (http:\/\/\S+)/.exec(this.stdout);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]);
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`the server exited with ${code} before listening:\n${this.output}`));
      });
    });
    this.address = new URL(this.url).host;
    return this.url;
  }

  /** SIGTERM (the graceful path the contract describes), SIGKILL if it has not exited in 15 s. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 15000);
    await exited;
    clearTimeout(timer);
  }

  async json(path, options = {}) {
    const response = await fetch(this.url + path, options);
    const body = await response.json().catch(() => null);
    return { status: response.status, body };
  }
}

const databaseFolder = mkdtempSync(join(tmpdir(), "livevote-examples-"));
const server = new DemoServer(`sqlite://${join(databaseFolder, "demo.db")}`);
let browser;

before(async () => {
  mkdirSync(screenshots, { recursive: true });
  await server.start();
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await server.stop();
  rmSync(databaseFolder, { recursive: true, force: true });
});

/** A page that fails the test on any script error, with its console kept for diagnostics. */
async function openPage(viewport) {
  const page = await browser.newPage({ viewport });
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // The browser itself reports refused connections and HTTP errors (402 for a vote without
    // the points, sockets while the server is down): those are the tests' doing, not the page's.
    const expected = /WebSocket connection|Failed to load resource|net::ERR_/;
    if (message.type() === "error" && !expected.test(message.text())) problems.push(`console: ${message.text()}`);
  });
  return { page, problems };
}

/** The widths of an event card's bars and its total, as the overlay shows them. */
/** The card the overlay shows for an event: a card that is fading out ("leaving") may still
 *  be in the page for half a second next to the event's new card, and is skipped. */
async function readCard(page, eventId) {
  return page.evaluate((id) => {
    const card = document.querySelector(`.card:not(.leaving)[data-event-id="${id}"]`);
    if (!card) return null;
    return {
      status: card.dataset.status,
      widths: [...card.querySelectorAll(".bar")].map((bar) => bar.style.width).join(","),
      total: card.querySelector(".total").textContent,
      winner: card.querySelector(".option.winner .option-label")?.textContent ?? null,
    };
  }, eventId);
}

test("the overlay configured with a token in its query string shows the streamer's events", { timeout: 60000 }, async () => {
  const overlayToken = await server.json("/demo/token?role=overlay");
  assert.equal(overlayToken.status, 200);
  const { page, problems } = await openPage({ width: 1920, height: 1080 });
  await page.goto(`${server.url}/overlay/?streamerId=${STREAMER_ID}&token=${encodeURIComponent(overlayToken.body.token)}`);
  await eventually("an event card", () => page.evaluate(() => Boolean(document.querySelector(".card .option"))));
  assert.deepEqual(problems, [], "the overlay logged no errors");
  await page.close();
});

test("the overlay works opened from a local file, as an OBS browser source can", { timeout: 60000 }, async () => {
  const overlayToken = await server.json("/demo/token?role=overlay");
  const { page, problems } = await openPage({ width: 1920, height: 1080 });
  const file = pathToFileURL(join(root, "examples", "obs-overlay", "index.html"));
  file.search = new URLSearchParams({ server: server.url, streamerId: STREAMER_ID, token: overlayToken.body.token }).toString();
  await page.goto(file.href);
  await eventually("an event card on the file:// page", () => page.evaluate(() => Boolean(document.querySelector(".card .option"))));
  assert.deepEqual(problems, [], "the overlay logged no errors");
  await page.close();
});

test("the overlay the demo prints shows live events, moving bars and results, and rides out a server restart", { timeout: 180000 }, async () => {
  const overlayToken = await server.json("/demo/token?role=overlay");
  assert.equal(overlayToken.status, 200);
  // The address the demo printed for OBS, with a shorter hold so that the test sees it end.
  const printed = await eventually("the overlay URL on the demo's output", () => /(http:\/\/\S+\/overlay\/\?\S+)/.exec(server.stdout), 10000);
  const { page, problems } = await openPage({ width: 1920, height: 1080 });
  await page.goto(`${printed[1]}&hold=6`);

  // An event appears.
  const firstOpen = await eventually("an open event card", () =>
    page.evaluate(() => document.querySelector('.card:not(.leaving)[data-status="open"]')?.dataset.eventId),
  );
  assert.ok(await page.locator(`.card[data-event-id="${firstOpen}"] .title`).first().textContent());

  // Its bars move as the simulated viewers vote (on this event or the next one, if it closes first).
  let moved = null;
  const seen = new Map();
  await eventually("bars that move", async () => {
    const ids = await page.evaluate(() => [...document.querySelectorAll('.card:not(.leaving)[data-status="open"]')].map((card) => card.dataset.eventId));
    for (const id of ids) {
      const card = await readCard(page, id);
      if (!card) continue;
      if (seen.has(id) && seen.get(id) !== card.widths && card.widths.split(",").some((width) => width !== "0.0%")) {
        moved = id;
        return true;
      }
      seen.set(id, card.widths);
    }
    return false;
  }, 30000, 300);
  assert.ok(moved);
  // Let the bar transition settle before the picture.
  await page.waitForTimeout(800);
  await page.screenshot({ path: join(screenshots, "overlay-live.png"), omitBackground: true });

  // A result appears after a close (by the timer or by hand) and is highlighted.
  const closedId = await eventually("a result card", () =>
    page.evaluate(() => document.querySelector('.card:not(.leaving)[data-status="closed"] .option.winner')?.closest(".card").dataset.eventId),
    40000,
  );
  const result = await readCard(page, closedId);
  assert.equal(result.status, "closed");
  assert.ok(result.winner, "the winner is highlighted");
  const view = await server.json(`/api/events/${closedId}`, { headers: { authorization: `Bearer ${overlayToken.body.token}` } });
  assert.equal(view.status, 200);
  const winnerLabel = view.body.event.options.find((option) => option.id === view.body.result.optionId).label;
  assert.equal(result.winner, winnerLabel, "the overlay shows the server's result");
  await page.waitForTimeout(700);
  await page.screenshot({ path: join(screenshots, "overlay-result.png"), omitBackground: true });

  // The result is kept a few seconds, then the card leaves.
  await eventually("the result card to leave after its hold time", async () => (await readCard(page, closedId)) === null, 20000);

  // The reconnect indicator appears while the server is down...
  const indicator = page.locator("#connection");
  assert.equal(await indicator.isVisible(), false, "no indicator while connected");
  const address = server.address;
  await server.stop();
  await eventually("the reconnecting indicator", () => indicator.isVisible(), 20000);
  assert.match(await indicator.textContent(), /reconnecting/);
  await page.screenshot({ path: join(screenshots, "overlay-reconnecting.png"), omitBackground: true });

  // ...and clears itself when the server is back on the same port and database.
  await server.start(address);
  await eventually("the indicator to clear after the restart", async () => !(await indicator.isVisible()), 60000, 250);
  await eventually("an open event after the restart", () => page.evaluate(() => Boolean(document.querySelector('.card[data-status="open"]'))), 30000);
  // Let entrances and exits finish before the picture.
  await page.waitForTimeout(1000);
  await page.screenshot({ path: join(screenshots, "overlay-after-restart.png"), omitBackground: true });

  assert.deepEqual(problems, [], "the overlay logged no errors");
  await page.close();
});

/** Hides the viewer's message, so that the next one shown is the answer to the next click. */
async function hideMessage(page) {
  await page.evaluate(() => {
    document.getElementById("message").hidden = true;
  });
}

/** Clicks a vote button; false when it could not be clicked within 5 s, which happens when
 *  its event closed between finding the button and clicking it (the page disables it), so
 *  that the caller tries another. Every caller bounds its retries. */
async function clickUnlessDisabled(button) {
  try {
    await button.click({ timeout: 5000 });
    return true;
  } catch (error) {
    if (error.name === "TimeoutError") return false;
    throw error;
  }
}

test("the viewer page votes, shows the cost, and follows the balance live", { timeout: 120000 }, async () => {
  const { page, problems } = await openPage({ width: 900, height: 1000 });
  await page.goto(`${server.url}/viewer/?user=1`);
  const balance = page.locator("#balance");
  await eventually("the balance", async () => (await balance.getAttribute("data-balance")) !== null);

  // Vote once; a vote that loses a race with the close is tried again on another event.
  let voted = false;
  for (let attempt = 0; attempt < 5 && !voted; attempt += 1) {
    const anyButton = page.locator(".event:not(.closed) .vote:not([disabled])").first();
    await anyButton.waitFor({ timeout: 30000 });
    // Pin one button by its event and option, so that every step below acts on the same one.
    const [eventId, optionId] = await anyButton.evaluate((element) => [element.closest(".event").dataset.eventId, element.closest(".option").dataset.optionId]);
    const button = page.locator(`.event[data-event-id="${eventId}"] .option[data-option-id="${optionId}"] .vote`);
    const cost = Number(await button.getAttribute("data-cost"));
    assert.ok(cost > 0);
    assert.match(await button.textContent(), new RegExp(`${cost.toLocaleString("en-US")} pts`), "the button shows the cost");
    const before = Number(await balance.getAttribute("data-balance"));
    await hideMessage(page);
    // The same close race as below, before the click: try another event.
    if (!(await clickUnlessDisabled(button))) continue;
    const message = page.locator("#message");
    await message.waitFor({ state: "visible", timeout: 10000 });
    if ((await message.getAttribute("data-kind")) === "success") {
      await eventually("the balance to drop by the cost", async () => Number(await balance.getAttribute("data-balance")) === before - cost, 10000);
      voted = true;
    } else {
      assert.match(await message.textContent(), /closed/i, "only a close race may refuse this vote");
    }
  }
  assert.ok(voted, "a vote was accepted");
  await page.screenshot({ path: join(screenshots, "viewer-voted.png") });

  // Spend almost everything from elsewhere (another tab, say): the page follows through
  // BALANCE_UPDATED, and a vote it can no longer afford is explained in words.
  const user = await server.json("/demo/token?role=viewer&user=1");
  const authorization = { authorization: `Bearer ${user.body.token}`, "content-type": "application/json" };
  let drained = false;
  for (let attempt = 0; attempt < 5 && !drained; attempt += 1) {
    const open = await server.json(`/api/events?streamerId=${STREAMER_ID}&status=open`, { headers: authorization });
    const event = open.body.events.map((item) => item.event).sort((a, b) => Date.parse(b.closesAt) - Date.parse(a.closesAt))[0];
    if (!event) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    const current = (await server.json("/api/balance", { headers: authorization })).body.balance;
    const votes = Math.min(1000, Math.floor(current / event.costPerVote));
    if (votes === 0) {
      drained = true;
      break;
    }
    const answer = await server.json(`/api/events/${event.id}/votes`, {
      method: "POST",
      headers: authorization,
      body: JSON.stringify({ optionId: event.options[0].id, votes }),
    });
    if (answer.status === 200) {
      await eventually("the page to show the balance from BALANCE_UPDATED", async () => Number(await balance.getAttribute("data-balance")) === answer.body.balance, 10000);
      drained = answer.body.balance < 10;
    }
  }
  assert.ok(drained, "the balance was spent down");
  await eventually("a vote that costs more than the balance", async () => {
    const button = page.locator(".event:not(.closed) .vote:not([disabled])").first();
    if ((await button.count()) === 0) return false;
    await hideMessage(page);
    if (!(await clickUnlessDisabled(button))) return false;
    const message = page.locator("#message");
    await message.waitFor({ state: "visible", timeout: 5000 });
    return /Not enough points/.test(await message.textContent());
  }, 30000, 500);
  await page.screenshot({ path: join(screenshots, "viewer-not-enough-points.png") });
  assert.deepEqual(problems, [], "the viewer page logged no errors");
  await page.close();
});

test("the worker example creates events with its own ids, re-sends one and closes one by hand", { timeout: 60000 }, async () => {
  assert.ok(existsSync(workerBinary), `${workerBinary} is missing: run cargo build -p livevote-worker-example`);
  const child = spawn(workerBinary, [], {
    env: { ...process.env, LIVEVOTE_URL: server.url, EVENT_COUNT: "2", EVENT_SECONDS: "30" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  const timer = setTimeout(() => child.kill("SIGKILL"), 45000);
  const code = await new Promise((resolve) => child.once("exit", resolve));
  clearTimeout(timer);
  assert.equal(code, 0, output);
  assert.equal((output.match(/created event \S+ ".*" \(201\)/g) || []).length, 2, output);
  assert.match(output, /re-sent event \S+: 200 \(already created/, output);
  const closed = /closed event (\S+) by hand: winner (\S+)/.exec(output);
  assert.ok(closed, output);
  const token = (await server.json("/demo/token?role=overlay")).body.token;
  const view = await server.json(`/api/events/${closed[1]}`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(view.body.status, "closed");
});
