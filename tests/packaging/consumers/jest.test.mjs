// Jest 30 in its default CommonJS mode with the jsdom environment, as a React app's tests run:
// `require("livevote")` and `require("livevote/react")` resolve (the `require` condition), the
// client connects through a scripted WebSocket, and a StrictMode provider renders live. jsdom
// lacks TextEncoder/TextDecoder: the test adds them in a setup file, as the README says to.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cleanUp, consumers, project, run, STREAMER } from "./harness.mjs";

after(cleanUp);

const SPEC = `
  const { connect, LivevoteError } = require("livevote");
  const { createElement: h, StrictMode, act } = require("react");
  const { createRoot } = require("react-dom/client");
  const { LivevoteProvider, useStatus } = require("livevote/react");

  class ScriptedSocket {
    constructor(url) { this.url = url; this.readyState = 0; ScriptedSocket.sockets.push(this); setTimeout(() => { this.readyState = 1; if (this.onopen) this.onopen({}); }, 1); }
    send(text) {
      const command = JSON.parse(text);
      if (command.action === "subscribe") setTimeout(() => this.onmessage({ data: JSON.stringify({ type: "SUBSCRIBED", payload: { channels: command.channels } }) }), 1);
    }
    close() { this.closed = true; }
  }
  ScriptedSocket.sockets = [];
  const options = { url: "http://127.0.0.1:9", token: "t", streamerId: "${STREAMER}", WebSocket: ScriptedSocket };
  globalThis.IS_REACT_ACT_ENVIRONMENT = true;

  test("connect() reaches live", async () => {
    const client = await connect(options);
    await client.ready();
    expect(client.status().state).toBe("live");
    client.close();
    await expect(connect({ token: "t" })).rejects.toBeInstanceOf(LivevoteError);
  });

  test("a StrictMode provider renders connecting, then live, with one socket", async () => {
    ScriptedSocket.sockets.length = 0;
    const Status = () => h("p", null, useStatus().state);
    const container = document.createElement("div");
    const root = createRoot(container);
    await act(async () => root.render(h(StrictMode, null, h(LivevoteProvider, { options }, h(Status)))));
    for (let wait = 0; container.textContent !== "live" && wait < 100; wait += 1) {
      await act(() => new Promise((resolve) => setTimeout(resolve, 20)));
    }
    expect(container.textContent).toBe("live");
    expect(ScriptedSocket.sockets.length).toBe(1);
    await act(async () => root.unmount());
    await act(() => new Promise((resolve) => setTimeout(resolve, 20)));
    expect(ScriptedSocket.sockets[0].closed).toBe(true);
  });
`;

test("Jest (CommonJS, jsdom) requires livevote and livevote/react and connects", async () => {
  const app = await project("jest");
  await writeFile(join(app, "livevote.test.js"), SPEC);
  // jsdom has no TextEncoder/TextDecoder, which the wasm glue needs: the setup the README gives.
  await writeFile(join(app, "jest.setup.js"), `const { TextDecoder, TextEncoder } = require("node:util");\nObject.assign(globalThis, { TextDecoder, TextEncoder });\n`);
  await writeFile(join(app, "jest.config.js"), `module.exports = { testEnvironment: "jsdom", rootDir: __dirname, setupFiles: ["<rootDir>/jest.setup.js"] };`);
  const jest = join(consumers, "node_modules/jest/bin/jest.js");
  const outcome = await run(process.execPath, [jest, "--config", join(app, "jest.config.js"), "--ci", "--colors=false"], { cwd: app, timeout: 120_000 }).catch((error) => error);
  const output = `${outcome.stdout}\n${outcome.stderr}`;
  assert.equal(outcome.code ?? 0, 0, output);
  assert.match(output, /Tests:\s+2 passed, 2 total/, output);
});
