// The sizes a page pays, gzipped as a server sends them: the default entry (wasm inlined)
// within 30 KiB, each framework entry within 2 KiB and free of the wasm (it imports `livevote`,
// so an app that uses both ships the client once). npm/build.mjs fails a build over these too.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { dist } from "./harness.mjs";

const gzipped = async (file) => gzipSync(await readFile(join(dist, file)), { level: 9 }).length;

test("the default entry stays within 30 KiB gzipped", async () => {
  for (const file of ["index.js", "index.cjs"]) assert.ok((await gzipped(file)) <= 30 * 1024, `${file}: ${await gzipped(file)} bytes`);
});

for (const framework of ["react", "vue"]) {
  test(`livevote/${framework} stays within 2 KiB gzipped and leaves the client to livevote`, async () => {
    for (const file of [`${framework}.js`, `${framework}.cjs`]) {
      const bytes = await gzipped(file);
      assert.ok(bytes <= 2 * 1024, `${file}: ${bytes} bytes`);
      const code = await readFile(join(dist, file), "utf8");
      assert.match(code, /from"livevote"|require\("livevote"\)/, `${file} imports livevote`);
      assert.doesNotMatch(code, /__livevoteWasm|WebAssembly/, `${file} holds no wasm`);
    }
  });
}
