// The OBS overlay's look options from its URL (theme, position, scale, accent colours, font,
// which events to show), each checked by its pixels in headless Chromium: the overlay with the
// option must look different from the overlay without it, in the same scripted state (one open
// vote and one result, played by an in-page WebSocket, so the picture does not depend on a
// server's timing), while two pictures without it are the same. Pictures land in
// target/screenshots/overlay-option-*.png.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { eventPayload, launchBrowser, PAGE_INSTRUMENTS, root, serveStatic } from "./sdk-harness.mjs";

const STREAMER = "5f1c0a4e-7d1b-4c39-9a55-3d2f6c8e9b10";
const OPEN = "3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01";
const CLOSED = "4a2d3b5f-9e8c-4d2b-8f3a-6c7b8d9e0f12";
const screenshots = join(root, "target", "screenshots");
let browser;
let server;

before(async () => {
  mkdirSync(screenshots, { recursive: true });
  browser = await launchBrowser();
  // The harness's server knows no .css type, and Chromium drops a stylesheet served without it.
  server = await serveStatic(root, {}, async (request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    if (path !== "/examples/obs-overlay/overlay.css") return false;
    response.writeHead(200, { "content-type": "text/css" });
    response.end(await readFile(join(root, path)));
    return true;
  });
});
after(async () => {
  await browser?.close();
  await server?.close();
});

/** The overlay with `options` added to its query string, in the scripted state; its picture. */
async function picture(options, name) {
  const page = await browser.newPage({ viewport: { width: 1920, height: 1080 }, reducedMotion: "reduce" });
  try {
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.addInitScript(PAGE_INSTRUMENTS + "\nwindow.WebSocket = window.FakeWebSocket;");
    const query = new URLSearchParams({ server: "http://127.0.0.1:9", streamerId: STREAMER, token: "t", hold: "600", ...options });
    await page.goto(`${server.url}/examples/obs-overlay/index.html?${query}`);
    await page.evaluate(
      async ({ open, closed }) => {
        const socket = await waitFor(() => lastSocket(), "a socket");
        socket.open();
        await waitFor(() => socket.commands("subscribe").length, "subscribe");
        socket.receive([
          { type: "SUBSCRIBED", payload: { channels: socket.commands("subscribe")[0].channels } },
          { type: "EVENT_CREATED", payload: { event: closed } },
          { type: "EVENT_CREATED", payload: { event: open } },
          { type: "EVENT_UPDATED", payload: { eventId: open.id, totals: { yes: 30, no: 10 }, closesAt: null, seq: 1 } },
        ]);
        await new Promise((resolve) => setTimeout(resolve, 300));
        socket.receive({ type: "EVENT_CLOSED", payload: { eventId: closed.id, result: { optionId: "red", totals: { red: 7, blue: 3 } } } });
        await new Promise((resolve) => setTimeout(resolve, 600));
      },
      {
        open: eventPayload(OPEN, STREAMER, { closesInMs: 3_600_000, title: "Boss on the first try?" }),
        closed: eventPayload(CLOSED, STREAMER, { closesInMs: 3_600_000, options: ["red", "blue"], title: "Which team wins?" }),
      },
    );
    // The countdown and its band move with the clock: masked, so that only the option decides.
    const image = await page.screenshot({ omitBackground: true, mask: [page.locator(".countdown"), page.locator(".time-band")], maskColor: "#ff00ff" });
    if (name) await page.screenshot({ path: join(screenshots, `overlay-option-${name}.png`), omitBackground: true });
    assert.deepEqual(errors, []);
    return image;
  } finally {
    await page.close();
  }
}

let plain;
test("two pictures of the overlay without options are the same", async () => {
  plain = await picture({}, "default");
  assert.ok((await picture({})).equals(plain), "the scripted overlay is pixel-stable");
});

const OPTIONS = {
  "theme=light": { theme: "light" },
  "position=bottom-left": { position: "bottom-left" },
  "scale=1.5": { scale: "1.5" },
  "accent=ff5f8f": { accent: "ff5f8f" },
  "accent2=ffd000": { accent2: "ffd000" },
  "font=DejaVu Serif": { font: "DejaVu Serif" },
  "show=open": { show: "open" },
  "show=results": { show: "results" },
};
for (const [name, options] of Object.entries(OPTIONS)) {
  test(`${name} changes the overlay's pixels`, async () => {
    const image = await picture(options, name.replace(/[= ]/g, "-"));
    assert.ok(!image.equals(plain), `${name} looks the same as the default`);
  });
}

test("malformed options are ignored: the default look", async () => {
  const image = await picture({ theme: "neon", scale: "99", accent: "red;}", font: "x;}body{", show: "none" });
  assert.ok(image.equals(plain));
});
