// Node as a user runs it: `require("livevote")` (and the framework entries) with require(esm)
// switched off, as on Node 20.0–20.18, where only a CommonJS build can be required; and Node 20
// with the `ws` package installed, found by the client on its own, against a WebSocket server
// on loopback that plays the livevote server's part.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cleanUp, project, run, STREAMER } from "./harness.mjs";

let folder;
before(async () => {
  folder = await project("node");
});
after(cleanUp);

// A livevote server's first answers, played by `ws`'s server: SUBSCRIBED for the channels asked.
const SERVER = (module) => `
  const { WebSocketServer } = ${module};
  function scriptedServer() {
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    server.on("connection", (socket, request) => {
      server.lastUrl = request.url;
      socket.on("message", (text) => {
        const command = JSON.parse(String(text));
        if (command.action === "subscribe") socket.send(JSON.stringify({ type: "SUBSCRIBED", payload: { channels: command.channels } }));
      });
    });
    return new Promise((resolve) => server.on("listening", () => resolve(server)));
  }
`;

const CHECK = `
  async function check(connect) {
    const server = await scriptedServer();
    const client = await connect({ url: "http://127.0.0.1:" + server.address().port, token: "t", streamerId: "${STREAMER}" });
    await client.ready();
    const state = client.status().state;
    client.close();
    await new Promise((resolve) => server.close(resolve));
    return { state, path: server.lastUrl.split("?")[0], hasGlobalWebSocket: typeof globalThis.WebSocket === "function" };
  }
`;

test("require() works where Node cannot require an ES module (Node 20.0–20.18, --no-experimental-require-module)", async () => {
  const script = join(folder, "require-check.cjs");
  await writeFile(
    script,
    `${SERVER('require("ws")')}${CHECK}
     const { connect, LivevoteError } = require("livevote");
     const react = require("livevote/react");
     const vue = require("livevote/vue");
     check(connect).then((result) => console.log(JSON.stringify({
       ...result,
       error: new LivevoteError("X", "y") instanceof Error,
       react: Object.keys(react).sort(),
       vue: Object.keys(vue).sort(),
     })));`,
  );
  const { stdout } = await run(process.execPath, ["--no-experimental-require-module", script], { cwd: folder, timeout: 30_000 });
  assert.deepEqual(JSON.parse(stdout), {
    state: "live",
    path: "/realtime",
    hasGlobalWebSocket: false,
    error: true,
    react: ["LivevoteProvider", "useBalance", "useEvent", "useEvents", "useLivevote", "useStatus"],
    vue: ["injectLivevote", "provideLivevote", "useLivevote"],
  });
});

test("Node 20 with ws installed: import and require both find it without options.WebSocket", async () => {
  const esm = join(folder, "ws-check.mjs");
  await writeFile(esm, `import * as ws from "ws";\n${SERVER("ws")}${CHECK}\nimport { connect } from "livevote";\nconsole.log(JSON.stringify(await check(connect)));`);
  const cjs = join(folder, "ws-check.cjs");
  await writeFile(cjs, `${SERVER('require("ws")')}${CHECK}\ncheck(require("livevote").connect).then((result) => console.log(JSON.stringify(result)));`);
  for (const script of [esm, cjs]) {
    // `ws` comes from the consumers' node_modules, above this project's.
    const { stdout } = await run(process.execPath, ["--no-experimental-require-module", script], { cwd: folder, timeout: 30_000 });
    assert.deepEqual(JSON.parse(stdout), { state: "live", path: "/realtime", hasGlobalWebSocket: false }, script);
  }
});
