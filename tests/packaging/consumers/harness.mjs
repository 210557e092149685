// Helpers for the consumer-project packaging tests (no tests here): the packed `livevote`
// tarball (packed once per test file, as a user's `npm install` would get it), unpacked into a
// fresh project folder whose other packages (Next.js, webpack, React, Vue, Svelte, Jest) come
// from this folder's node_modules, installed by `npm ci` from package-lock.json.
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { PAGE_INSTRUMENTS, root } from "../../e2e/sdk-harness.mjs";

export { launchBrowser, PAGE_INSTRUMENTS, root, serveStatic } from "../../e2e/sdk-harness.mjs";

/** The package folder under test: npm/, or LIVEVOTE_NPM_DIR (an older build, to see these tests fail on it). */
export const packageFolder = process.env.LIVEVOTE_NPM_DIR || join(root, "npm");
export const dist = join(packageFolder, "dist");

export const run = promisify(execFile);
/** This folder: its node_modules hold the consumers' packages. */
export const consumers = fileURLToPath(new URL(".", import.meta.url));
/** React 18 and its own node_modules (React 19 is in `consumers`). */
export const react18 = join(consumers, "react18");
export const STREAMER = "a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d";

let tarball;
const made = [];

/** `npm pack` of npm/ (once): the file a registry would serve. */
export async function packed() {
  if (!tarball) {
    const folder = await mkdtemp(join(tmpdir(), "livevote-pack-"));
    made.push(folder);
    const { stdout } = await run("npm", ["pack", packageFolder, "--pack-destination", folder, "--json"], { cwd: folder });
    tarball = join(folder, JSON.parse(stdout)[0].filename);
  }
  return tarball;
}

/**
 * A new project folder with the packed package in node_modules/livevote. `under` is where it
 * lives: inside `consumers` (or `react18`) its imports find those packages; in the system's
 * temporary folder it finds nothing else, as a project that installed livevote alone.
 */
export async function project(name, under = consumers) {
  const parent = under === tmpdir() ? under : join(under, ".work");
  await mkdir(parent, { recursive: true });
  const folder = await mkdtemp(join(parent, `${name}-`));
  made.push(folder);
  const modules = join(folder, "node_modules");
  await mkdir(modules, { recursive: true });
  await run("tar", ["-xzf", await packed(), "-C", modules]);
  await run("mv", [join(modules, "package"), join(modules, "livevote")]);
  return folder;
}

/** Removes every folder made by packed() and project(). */
export async function cleanUp() {
  for (const folder of made.splice(0)) await rm(folder, { recursive: true, force: true });
}

/**
 * Page code: drives the scripted socket (PAGE_INSTRUMENTS' FakeWebSocket) through open and
 * SUBSCRIBED with one event, as a server would.
 */
export const SERVE_ONE_EVENT = `
  window.serveOneEvent = async () => {
    const socket = await waitFor(() => lastSocket(), "a socket");
    socket.open();
    await waitFor(() => socket.commands("subscribe").length, "subscribe");
    socket.receive([
      { type: "SUBSCRIBED", payload: { channels: socket.commands("subscribe")[0].channels } },
      { type: "EVENT_CREATED", payload: { event: { id: "3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01", streamerId: "${STREAMER}", gameId: null,
        title: "Will it work?", options: [{ id: "yes", label: "YES" }, { id: "no", label: "NO" }],
        closesAt: new Date(Date.now() + 60000).toISOString(), costPerVote: 10 } } },
    ]);
    return socket;
  };
`;

/** Opens `url` in a fresh context with the scripted socket as window.WebSocket; returns the page and its errors. */
export async function openPage(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") errors.push("console: " + message.text());
  });
  await page.addInitScript(PAGE_INSTRUMENTS_WITH_GLOBAL);
  await page.goto(url);
  return { page, errors, close: () => context.close() };
}

/** The instruments, with the scripted socket installed as the page's WebSocket. */
export const PAGE_INSTRUMENTS_WITH_GLOBAL = PAGE_INSTRUMENTS + "\nwindow.WebSocket = window.FakeWebSocket;\n" + SERVE_ONE_EVENT;
