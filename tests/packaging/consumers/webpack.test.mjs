// webpack 5 as an app uses it: a web bundle run in Chromium and a node bundle (what a Next.js
// server build makes) run in Node, each built with no warning and no error. The project sits
// in the system's temporary folder with livevote alone installed, so `ws` is missing, as in
// most apps: the node entry's optional import of it must not be resolved at bundle time.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cleanUp, consumers, launchBrowser, openPage, project, run, serveStatic, STREAMER } from "./harness.mjs";

const webpack = createRequire(join(consumers, "package.json"))("webpack");
let folder;
let browser;

before(async () => {
  folder = await project("webpack", tmpdir());
  await mkdir(join(folder, "src"));
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await cleanUp();
});

function bundle(config) {
  return new Promise((resolve, reject) =>
    webpack({ context: folder, mode: "production", devtool: false, ...config }, (error, stats) => {
      if (error) return reject(error);
      const { warnings, errors } = stats.toJson({ all: false, warnings: true, errors: true });
      resolve({ warnings: warnings.map((warning) => warning.message), errors: errors.map((problem) => problem.message) });
    }),
  );
}

test("a web target bundles livevote and livevote/url without warnings, and both connect in Chromium", async () => {
  await writeFile(
    join(folder, "src/web.js"),
    `import { connect } from "livevote";
     import { connect as connectWithUrl } from "livevote/url";
     async function check(connect) {
       const client = await connect({ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}" });
       await serveOneEvent();
       await client.ready();
       const result = { state: client.status().state, events: client.events().length };
       client.close();
       return result;
     }
     (async () => [await check(connect), await check(connectWithUrl)])()
       .then((results) => (window.result = results), (error) => (window.result = { error: String(error) }));`,
  );
  const { warnings, errors } = await bundle({
    target: "web",
    entry: "./src/web.js",
    output: { path: join(folder, "web"), filename: "main.js" },
  });
  assert.deepEqual({ warnings, errors }, { warnings: [], errors: [] });
  await writeFile(join(folder, "web/index.html"), `<!doctype html><link rel="icon" href="data:,"><script src="main.js"></script>`);
  const server = await serveStatic(join(folder, "web"));
  const opened = await openPage(browser, `${server.url}/index.html`);
  try {
    const result = await (await opened.page.waitForFunction(() => window.result, null, { timeout: 30_000 })).jsonValue();
    assert.deepEqual(result, [{ state: "live", events: 1 }, { state: "live", events: 1 }]);
    assert.deepEqual(opened.errors, []);
  } finally {
    await opened.close();
    await server.close();
  }
});

for (const [style, source] of [
  ["import", `import { connect, LivevoteError } from "livevote";`],
  ["require", `const { connect, LivevoteError } = require("livevote");`],
]) {
  test(`a node target bundles livevote (${style}) without warnings, and the bundle runs in Node`, async () => {
    await writeFile(
      join(folder, `src/node-${style}.js`),
      `${source}
       class FakeWebSocket { constructor(url) { setTimeout(() => this.onopen && this.onopen({}), 1); }
         send(text) { const command = JSON.parse(text);
           if (command.action === "subscribe") setTimeout(() => this.onmessage({ data: JSON.stringify({ type: "SUBSCRIBED", payload: { channels: command.channels } }) }), 1); }
         close() {} }
       (async () => {
         const client = await connect({ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}", WebSocket: FakeWebSocket });
         await client.ready();
         const state = client.status().state;
         client.close();
         // Node 20 has no WebSocket and this project no ws: the client must say how to get one.
         const missing = globalThis.WebSocket ? "INVALID_OPTIONS" : await connect({ url: "http://127.0.0.1:9", token: "t" }).then(() => "connected", (error) => error instanceof LivevoteError && error.code);
         console.log(JSON.stringify({ state, missing }));
       })();`,
    );
    const { warnings, errors } = await bundle({
      target: "node",
      entry: `./src/node-${style}.js`,
      output: { path: join(folder, `node-${style}`), filename: "main.js" },
    });
    assert.deepEqual({ warnings, errors }, { warnings: [], errors: [] });
    const { stdout } = await run(process.execPath, [join(folder, `node-${style}`, "main.js")], { cwd: folder, timeout: 30_000 });
    assert.deepEqual(JSON.parse(stdout), { state: "live", missing: "INVALID_OPTIONS" });
  });
}
