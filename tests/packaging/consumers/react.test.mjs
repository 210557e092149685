// livevote/react in a real build (Vite, React's development build, where StrictMode mounts,
// unmounts and mounts again) in Chromium, for React 18 and 19: one socket for the provider,
// the hooks follow the client from "connecting" to live with an event, unmounting closes the
// socket and leaves no timer or page listener behind.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "vite";
import { cleanUp, consumers, launchBrowser, openPage, project, react18, serveStatic, STREAMER } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await cleanUp();
});

const APP = `
  import { createElement as h, StrictMode } from "react";
  import { createRoot } from "react-dom/client";
  import { LivevoteProvider, useBalance, useEvent, useEvents, useLivevote, useStatus } from "livevote/react";

  function Votes() {
    const status = useStatus();
    const events = useEvents();
    const first = useEvent("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01");
    const balance = useBalance();
    const { client } = useLivevote();
    return h("main", null,
      h("p", { id: "state" }, status.state),
      h("p", { id: "events" }, String(events.length)),
      h("p", { id: "title" }, first ? first.title : "-"),
      h("p", { id: "balance" }, String(balance)),
      h("p", { id: "client" }, client ? "client" : "none"));
  }
  const options = { url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}" };
  const root = createRoot(document.getElementById("root"));
  root.render(h(StrictMode, null, h(LivevoteProvider, { options }, h(Votes))));
  window.unmount = () => root.unmount();
`;

const text = (page, id) => page.evaluate((id) => document.getElementById(id)?.textContent, id);

for (const [version, under] of [
  ["18", react18],
  ["19", consumers],
]) {
  describe(`React ${version} in StrictMode`, () => {
    test("one socket, hooks from connecting to live, nothing left after unmount", async () => {
      const app = await project(`react${version}`, under);
      await writeFile(join(app, "index.html"), `<!doctype html><link rel="icon" href="data:,"><div id="root"></div><script type="module" src="./main.js"></script>`);
      await writeFile(join(app, "main.js"), APP);
      // React's development build: the one where StrictMode double-mounts.
      await build({ root: app, logLevel: "warn", configFile: false, mode: "development", define: { "process.env.NODE_ENV": '"development"' }, build: { outDir: join(app, "dist"), minify: false, target: "chrome103" } });
      const react = await import(join(under, "node_modules/react/package.json"), { with: { type: "json" } });
      assert.equal(react.default.version.split(".")[0], version);
      const server = await serveStatic(join(app, "dist"));
      const opened = await openPage(browser, `${server.url}/index.html`);
      const { page } = opened;
      try {
        await page.waitForFunction(() => document.getElementById("state"));
        const first = await text(page, "state");
        assert.equal(first, "connecting");
        await page.evaluate(() => serveOneEvent());
        await page.waitForFunction(() => document.getElementById("state").textContent === "live");
        assert.equal(await text(page, "title"), "Will it work?");
        assert.equal(await text(page, "events"), "1");
        assert.equal(await text(page, "client"), "client");
        // Give a second connect() the time it would need to open its socket.
        await page.waitForTimeout(300);
        assert.equal(await page.evaluate(() => FakeWebSocket.sockets.length), 1, "StrictMode's second mount opened no second socket");
        // The client listens to online, focus and visibilitychange; the rest is the browser driver's.
        const live = await page.evaluate(() => aliveCounts());
        await page.evaluate(() => unmount());
        await page.waitForFunction(() => lastSocket().closedByClient !== null);
        assert.equal(await page.evaluate(() => lastSocket().closedByClient), 1000);
        assert.deepEqual(await page.evaluate(() => waitFor(() => aliveCounts().timeouts === 0 && aliveCounts(), "timers to end")), { timeouts: 0, intervals: 0, listeners: live.listeners - 3 });
        assert.deepEqual(opened.errors, []);
      } finally {
        await opened.close();
        await server.close();
      }
    });
  });
}
