// Packaging tests of the built `livevote` package (run `cargo xtask npm` first): the packed
// tarball holds exactly the whitelisted files; its types compile a strict consumer; a tiny
// Vite project, a plain module page, a `file://` page and Node 20 all import it and start a
// client (against an in-page scripted WebSocket, so no server is needed here).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { launchBrowser, PAGE_INSTRUMENTS, root, serveStatic } from "../e2e/sdk-harness.mjs";

const run = promisify(execFile);
const STREAMER = "a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d";

let work;
let project;
let browser;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "livevote-packaging-"));
  project = join(work, "project");
  await mkdir(join(project, "node_modules"), { recursive: true });
  const { stdout } = await run("npm", ["pack", join(root, "npm"), "--pack-destination", work, "--json"], { cwd: work });
  const [packed] = JSON.parse(stdout);
  await run("tar", ["-xzf", join(work, packed.filename), "-C", join(project, "node_modules")]);
  await run("mv", [join(project, "node_modules", "package"), join(project, "node_modules", "livevote")]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** What every page runs: connect through a scripted socket and reach `live`. */
const SCRIPT_CONNECT = `
  async function check(connect) {
    const client = await connect({ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}", WebSocket: FakeWebSocket });
    const socket = await waitFor(() => lastSocket(), "a socket");
    socket.open();
    await waitFor(() => socket.commands("subscribe").length, "subscribe");
    socket.receive({ type: "SUBSCRIBED", payload: { channels: socket.commands("subscribe")[0].channels } });
    await client.ready();
    const state = client.status().state;
    client.close();
    return state;
  }
`;

async function pageResult(url) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.addInitScript(PAGE_INSTRUMENTS);
    await page.goto(url);
    const result = await page.waitForFunction(() => window.result, null, { timeout: 30_000 });
    return { result: await result.jsonValue(), errors };
  } finally {
    await context.close();
  }
}

describe("the packed package", () => {
  test("holds the whitelisted files and valid exports", async () => {
    const { stdout } = await run("tar", ["-tzf", (await readdirTarball())]);
    const files = stdout.trim().split("\n").map((line) => line.replace(/^package\//, "")).sort();
    assert.deepEqual(files, [
      "README.md",
      "dist/index.cjs",
      "dist/index.js",
      "dist/livevote.global.js",
      "dist/livevote_sdk_bg.wasm",
      "dist/node.cjs",
      "dist/node.js",
      "dist/react.cjs",
      "dist/react.js",
      "dist/url.js",
      "dist/vue.cjs",
      "dist/vue.js",
      "package.json",
      "types-frameworks/react.d.ts",
      "types-frameworks/vue.d.ts",
      "types/global.d.ts",
      "types/index.d.ts",
      "types/url.d.ts",
    ]);
    const manifest = JSON.parse(await readFile(join(project, "node_modules/livevote/package.json"), "utf8"));
    assert.equal(manifest.type, "module");
    for (const [entry, conditions] of Object.entries(manifest.exports)) {
      if (typeof conditions === "string") continue;
      assert.equal(Object.keys(conditions)[0], "types", `${entry}: types first`);
      for (const [name, target] of Object.entries(conditions)) {
        if (typeof target === "object") assert.equal(Object.keys(target)[0], "types", `${entry}.${name}: types first`);
      }
    }
    assert.ok(manifest.exports["."].browser && manifest.exports["."].node);
  });

  for (const resolution of ["bundler", "nodenext"]) {
    test(`types compile a strict consumer (moduleResolution ${resolution})`, async () => {
      const folder = join(project, `tsc-${resolution}`);
      await mkdir(folder, { recursive: true });
      await cp(join(root, "tests/packaging/consumer.ts"), join(folder, "consumer.ts"));
      await writeFile(join(folder, "package.json"), JSON.stringify({ type: "module" }));
      const module = resolution === "bundler" ? "esnext" : "nodenext";
      await writeFile(
        join(folder, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: { strict: true, noEmit: true, target: "es2020", module, moduleResolution: resolution, lib: ["es2020", "dom"], skipLibCheck: false, types: [] },
          files: ["consumer.ts"],
        }),
      );
      await run(join(root, "node_modules/.bin/tsc"), ["--noEmit", "--strict", "-p", folder]).catch((error) => {
        throw new Error(`tsc failed:\n${error.stdout}\n${error.stderr}`);
      });
    });
  }

  test("a tiny Vite project bundles both entries and runs them in Chromium", async () => {
    const app = join(project, "vite-app");
    await mkdir(app, { recursive: true });
    await writeFile(join(app, "index.html"), `<!doctype html><meta charset="utf-8"><script type="module" src="./main.js"></script>`);
    await writeFile(
      join(app, "main.js"),
      `import { connect } from "livevote";
       import { connect as connectWithUrl } from "livevote/url";
       ${SCRIPT_CONNECT}
       Promise.all([check(connect), check(connectWithUrl)]).then((states) => (window.result = { states }), (error) => (window.result = { error: String(error) }));`,
    );
    const { build } = await import("vite");
    await build({ root: app, logLevel: "warn", configFile: false, build: { outDir: join(app, "dist"), target: "chrome103" } });
    const server = await serveStatic(join(app, "dist"));
    try {
      const { result, errors } = await pageResult(`${server.url}/index.html`);
      assert.deepEqual(result, { states: ["live", "live"] });
      assert.deepEqual(errors, []);
    } finally {
      await server.close();
    }
  });

  test("a plain HTML page imports the module without a bundler", async () => {
    const pages = {
      "/plain.html": `<!doctype html><meta charset="utf-8"><script type="module">
        import { connect } from "./node_modules/livevote/dist/index.js";
        ${SCRIPT_CONNECT}
        check(connect).then((state) => (window.result = { state }), (error) => (window.result = { error: String(error) }));
      </script>`,
    };
    const server = await serveStatic(project, pages);
    try {
      const { result, errors } = await pageResult(`${server.url}/plain.html`);
      assert.deepEqual(result, { state: "live" });
      assert.deepEqual(errors, []);
    } finally {
      await server.close();
    }
  });

  test("a file:// page (OBS browser source) loads the classic script", async () => {
    const page = join(project, "overlay.html");
    await writeFile(
      page,
      `<!doctype html><meta charset="utf-8"><script src="./node_modules/livevote/dist/livevote.global.js"></script>
       <script>${SCRIPT_CONNECT}
         check(livevote.connect).then((state) => (window.result = { state }), (error) => (window.result = { error: String(error) }));
       </script>`,
    );
    const { result, errors } = await pageResult(pathToFileURL(page).href);
    assert.deepEqual(result, { state: "live" });
    assert.deepEqual(errors, []);
  });

  test("Node 20 imports the node entry; without a WebSocket it says how to get one", async () => {
    const script = join(project, "node-check.mjs");
    await writeFile(
      script,
      `import { connect, LivevoteError } from "livevote";
       class FakeWebSocket { constructor(url) { this.url = url; setTimeout(() => this.onopen && this.onopen({}), 1); }
         send(text) { const command = JSON.parse(text);
           if (command.action === "subscribe") setTimeout(() => this.onmessage({ data: JSON.stringify({ type: "SUBSCRIBED", payload: { channels: command.channels } }) }), 1); }
         close() {} }
       const client = await connect({ url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}", WebSocket: FakeWebSocket });
       await client.ready();
       const state = client.status().state;
       client.close();
       let missing;
       if (!globalThis.WebSocket) {
         missing = await connect({ url: "http://127.0.0.1:9", token: "t" }).then(() => "connected", (error) => error instanceof LivevoteError && error.code);
       }
       console.log(JSON.stringify({ state, missing }));`,
    );
    const { stdout } = await run(process.execPath, [script], { cwd: project, timeout: 30_000 });
    const result = JSON.parse(stdout.trim());
    assert.equal(result.state, "live");
    if (result.missing !== undefined) assert.equal(result.missing, "INVALID_OPTIONS");
  });
});

async function readdirTarball() {
  const { readdir } = await import("node:fs/promises");
  const name = (await readdir(work)).find((file) => file.endsWith(".tgz"));
  return join(work, name);
}
