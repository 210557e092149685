// A page under a strict Content-Security-Policy: without 'wasm-unsafe-eval' in script-src the
// browser refuses to compile WebAssembly, and connect() must say so with a LivevoteError
// (WASM_BLOCKED, naming the missing source) for every entry; with it, the client connects.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { extname, join } from "node:path";
import { cleanUp, launchBrowser, openPage, project, serveStatic } from "./harness.mjs";

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };
let browser;
let folder;

before(async () => {
  folder = await project("csp");
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await cleanUp();
});

// Every script is a file: an inline one would be refused by the same policy.
const FILES = {
  "/module.html": `<!doctype html><script type="module" src="/module-check.js"></script>`,
  "/module-check.js": `import { connect, LivevoteError } from "/node_modules/livevote/dist/index.js";
    import * as withUrl from "/node_modules/livevote/dist/url.js";
    import { check } from "/check.js";
    check({ connect, LivevoteError }, withUrl);`,
  "/classic.html": `<!doctype html><script src="/node_modules/livevote/dist/livevote.global.js"></script><script src="/classic-check.js"></script>`,
  "/classic-check.js": `import("/check.js").then(({ check }) => check(window.livevote));`,
  "/check.js": `
    const attempt = (connect, LivevoteError) => connect({ url: "http://127.0.0.1:9", token: "t", streamerId: "a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d" }).then(
      async (client) => { await serveOneEvent(); await client.ready(); client.close(); return { state: "live" }; },
      (error) => ({ isLivevoteError: error instanceof LivevoteError, code: error.code, message: error.message }),
    );
    export async function check(livevote, withUrl) {
      const results = [await attempt(livevote.connect, livevote.LivevoteError)];
      // Each entry is a bundle of its own, with its own LivevoteError class.
      if (withUrl) results.push(await attempt(withUrl.connect, withUrl.LivevoteError));
      window.result = results;
    }`,
};

async function serveWithPolicy(policy) {
  return serveStatic(folder, {}, async (request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    let body = FILES[path];
    if (body === undefined) {
      if (!path.startsWith("/node_modules/livevote/dist/")) return false;
      body = await readFile(join(folder, path));
    }
    response.writeHead(200, { "content-type": TYPES[extname(path)] || "text/javascript", "content-security-policy": policy });
    response.end(body);
    return true;
  });
}

async function results(server, page) {
  const opened = await openPage(browser, `${server.url}${page}`);
  try {
    const handle = await opened.page.waitForFunction(() => window.result, null, { timeout: 30_000 });
    return await handle.jsonValue();
  } finally {
    await opened.close();
  }
}

describe("under script-src 'self'", () => {
  for (const page of ["/module.html", "/classic.html"]) {
    test(`${page}: connect() rejects with WASM_BLOCKED naming 'wasm-unsafe-eval'`, async () => {
      const server = await serveWithPolicy("script-src 'self'");
      try {
        for (const result of await results(server, page)) {
          assert.equal(result.isLivevoteError, true, JSON.stringify(result));
          assert.equal(result.code, "WASM_BLOCKED");
          assert.match(result.message, /'wasm-unsafe-eval'/);
        }
      } finally {
        await server.close();
      }
    });
  }
});

describe("under script-src 'self' 'wasm-unsafe-eval'", () => {
  for (const page of ["/module.html", "/classic.html"]) {
    test(`${page}: the client connects`, async () => {
      const server = await serveWithPolicy("script-src 'self' 'wasm-unsafe-eval'");
      try {
        for (const result of await results(server, page)) assert.deepEqual(result, { state: "live" });
      } finally {
        await server.close();
      }
    });
  }
});
