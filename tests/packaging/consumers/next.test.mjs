// A Next.js app-router page that uses livevote/react: `next build`, then `next start`; the
// server's HTML says "connecting" and the server opens no socket (a WebSocket that counts
// is installed in the server process), then Chromium hydrates the page without a mismatch
// and the client goes live through the scripted socket.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { cleanUp, consumers, launchBrowser, openPage, project, run, STREAMER } from "./harness.mjs";

let browser;
let server;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  server?.kill("SIGKILL");
  await browser?.close();
  await cleanUp();
});

const freePort = () =>
  new Promise((resolve) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });

test("an app-router page renders connecting on the server and goes live after hydration", { timeout: 600_000 }, async () => {
  const app = await project("next");
  await mkdir(join(app, "app"));
  await writeFile(join(app, "package.json"), JSON.stringify({ private: true, scripts: {} }));
  await writeFile(join(app, "next.config.mjs"), `export default { turbopack: { root: ${JSON.stringify(consumers)} } };`);
  await writeFile(join(app, "app/layout.js"), `export default function Layout({ children }) { return <html lang="en"><head><link rel="icon" href="data:," /></head><body>{children}</body></html>; }`);
  await writeFile(join(app, "app/page.js"), `import Votes from "./votes.js";\nexport default function Page() { return <main><h1>Votes</h1><Votes /></main>; }`);
  await writeFile(
    join(app, "app/votes.js"),
    `"use client";
     import { LivevoteProvider, useEvents, useStatus } from "livevote/react";
     function Status() {
       const status = useStatus();
       const events = useEvents();
       return <p id="state" data-events={events.length}>{status.state}</p>;
     }
     export default function Votes() {
       return <LivevoteProvider options={{ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}" }}><Status /></LivevoteProvider>;
     }`,
  );
  const sockets = join(app, "server-sockets.txt");
  await writeFile(join(app, "count-sockets.cjs"), `globalThis.WebSocket = class { constructor(url) { require("node:fs").appendFileSync(${JSON.stringify(sockets)}, url + "\\n"); } };`);
  const next = join(consumers, "node_modules/next/dist/bin/next");
  const env = { ...process.env, NEXT_TELEMETRY_DISABLED: "1", NODE_OPTIONS: `--require ${join(app, "count-sockets.cjs")}` };
  await run(process.execPath, [next, "build"], { cwd: app, env, timeout: 480_000, maxBuffer: 16 * 1024 * 1024 }).catch((error) => {
    throw new Error(`next build failed:\n${error.stdout}\n${error.stderr}`);
  });
  const port = await freePort();
  server = spawn(process.execPath, [next, "start", "-H", "127.0.0.1", "-p", String(port)], { cwd: app, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  server.stdout.on("data", (chunk) => (output += chunk));
  server.stderr.on("data", (chunk) => (output += chunk));
  const url = `http://127.0.0.1:${port}/`;
  let html;
  for (let attempt = 0; attempt < 100 && html === undefined; attempt += 1) {
    html = await fetch(url).then((response) => response.text(), () => undefined);
    if (html === undefined) await new Promise((resolve) => setTimeout(resolve, 200));
  }
  assert.ok(html, `next start answered nothing:\n${output}`);
  assert.match(html, /<p id="state" data-events="0">connecting<\/p>/);

  const opened = await openPage(browser, url);
  try {
    await opened.page.evaluate(() => serveOneEvent());
    await opened.page.waitForFunction(() => document.getElementById("state").textContent === "live");
    assert.equal(await opened.page.evaluate(() => document.getElementById("state").dataset.events), "1");
    assert.equal(await opened.page.evaluate(() => FakeWebSocket.sockets.length), 1);
    assert.deepEqual(opened.errors, [], "no hydration mismatch or other error");
  } finally {
    await opened.close();
  }
  const openedOnServer = await readFile(sockets, "utf8").catch(() => "");
  assert.equal(openedOnServer, "", "the server opened no socket");
});
