// livevote/vue and the store's Svelte contract in real builds in Chromium: a Vue app whose
// composable refs follow the client from "connecting" to live and whose unmount closes the
// socket; Vue's server renderer shows "connecting" and opens no socket; a compiled Svelte 5
// component reads `$store` straight from client.store; svelte/store's get() sees a value.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "vite";
import { cleanUp, consumers, launchBrowser, openPage, project, run, serveStatic, STREAMER } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await cleanUp();
});

async function bundleAndOpen(app) {
  await writeFile(join(app, "index.html"), `<!doctype html><link rel="icon" href="data:,"><div id="root"></div><script type="module" src="./main.js"></script>`);
  await build({
    root: app,
    logLevel: "warn",
    configFile: false,
    define: { __VUE_OPTIONS_API__: "true", __VUE_PROD_DEVTOOLS__: "false", __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: "false" },
    build: { outDir: join(app, "dist"), target: "chrome103" },
  });
  const server = await serveStatic(join(app, "dist"));
  const opened = await openPage(browser, `${server.url}/index.html`);
  return { ...opened, close: async () => { await opened.close(); await server.close(); } };
}

const text = (page, id) => page.evaluate((id) => document.getElementById(id)?.textContent, id);

test("a Vue app's refs follow the client, and unmounting closes its socket", async () => {
  const app = await project("vue");
  await writeFile(
    join(app, "main.js"),
    `import { createApp, defineComponent, h } from "vue";
     import { provideLivevote, injectLivevote } from "livevote/vue";
     const Child = defineComponent({ setup() {
       const { status, events, event } = injectLivevote();
       const first = event("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01");
       return () => h("main", [h("p", { id: "state" }, status.value.state), h("p", { id: "events" }, String(events.value.length)), h("p", { id: "title" }, first.value ? first.value.title : "-")]);
     } });
     const App = defineComponent({ setup() {
       provideLivevote({ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}" });
       return () => h(Child);
     } });
     const instance = createApp(App);
     instance.mount("#root");
     window.unmount = () => instance.unmount();`,
  );
  const { page, errors, close } = await bundleAndOpen(app);
  try {
    await page.waitForFunction(() => document.getElementById("state"));
    assert.equal(await text(page, "state"), "connecting");
    await page.evaluate(() => serveOneEvent());
    await page.waitForFunction(() => document.getElementById("state").textContent === "live");
    assert.equal(await text(page, "events"), "1");
    assert.equal(await text(page, "title"), "Will it work?");
    assert.equal(await page.evaluate(() => FakeWebSocket.sockets.length), 1);
    await page.evaluate(() => unmount());
    await page.waitForFunction(() => lastSocket().closedByClient !== null);
    assert.equal(await page.evaluate(() => lastSocket().closedByClient), 1000);
    assert.deepEqual(errors, []);
  } finally {
    await close();
  }
});

test("Vue's server renderer shows connecting and opens no socket", async () => {
  const app = await project("vue-ssr");
  await writeFile(
    join(app, "ssr.mjs"),
    `import { createSSRApp, defineComponent, h } from "vue";
     import { renderToString } from "vue/server-renderer";
     import { useLivevote } from "livevote/vue";
     let sockets = 0;
     globalThis.WebSocket = class { constructor() { sockets += 1; } };
     const App = defineComponent({ setup() {
       const { status } = useLivevote({ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}" });
       return () => h("p", status.value.state);
     } });
     const html = await renderToString(createSSRApp(App));
     await new Promise((resolve) => setTimeout(resolve, 300));
     console.log(JSON.stringify({ html, sockets }));`,
  );
  const { stdout } = await run(process.execPath, [join(app, "ssr.mjs")], { cwd: app, timeout: 30_000 });
  assert.deepEqual(JSON.parse(stdout), { html: "<p>connecting</p>", sockets: 0 });
});

test("the README's Svelte 5 component reads $store from client.store, and svelte/store's get() sees a value", async () => {
  const app = await project("svelte");
  const require = createRequire(join(consumers, "package.json"));
  const compiler = await import(require.resolve("svelte/compiler"));
  const compile = compiler.compile || compiler.default.compile;
  const component = compile(
    // The README's Svelte quick start, with ids to read and the store kept for get().
    `<script>
       import { connect } from "livevote";
       let store = $state();
       connect({ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}" }).then((client) => (store = window.livevoteStore = client.store));
     </script>
     {#if store}<p id="state">{$store.status.state}</p><p id="events">{$store.events.length}</p>{/if}`,
    { generate: "client", filename: "Votes.svelte" },
  );
  await writeFile(join(app, "Votes.js"), component.js.code);
  await writeFile(
    join(app, "main.js"),
    `import { mount } from "svelte";
     import { get } from "svelte/store";
     import Votes from "./Votes.js";
     window.getState = () => get(window.livevoteStore).status.state;
     mount(Votes, { target: document.getElementById("root") });`,
  );
  const { page, errors, close } = await bundleAndOpen(app);
  try {
    await page.waitForFunction(() => document.getElementById("state"));
    assert.equal(await text(page, "state"), "connecting");
    assert.equal(await page.evaluate(() => getState()), "connecting");
    await page.evaluate(() => serveOneEvent());
    await page.waitForFunction(() => document.getElementById("state").textContent === "live");
    assert.equal(await text(page, "events"), "1");
    assert.equal(await page.evaluate(() => getState()), "live");
    assert.deepEqual(errors, []);
  } finally {
    await close();
  }
});
