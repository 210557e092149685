// Bundles the package's JavaScript entries into npm/dist with Vite (called by `cargo xtask
// npm` after wasm-bindgen and wasm-opt; not published). Each entry becomes one self-contained
// file so that its size is the size a page pays.
//
// usage: node npm/build.mjs <folder with livevote_sdk.js, livevote_sdk_bg.wasm and
//        minified-names.json> <dist folder>
import { readFile, writeFile, mkdir, rm, copyFile } from "node:fs/promises";
import { resolve, join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";
import { gzipSync } from "node:zlib";
import { build } from "vite";
import { unlzma } from "./src/unlzma.js";

const here = dirname(fileURLToPath(import.meta.url));
const [bindgenArgument, distArgument] = process.argv.slice(2);
if (!bindgenArgument || !distArgument) {
  console.error("usage: node npm/build.mjs <wasm-bindgen output folder> <dist folder>");
  process.exit(2);
}
const bindgen = resolve(bindgenArgument);
const dist = resolve(distArgument);

const wasm = await readFile(join(bindgen, "livevote_sdk_bg.wasm"));

// wasm-opt renamed the imports, the exports and the import module to one or two letters
// (minified-names.json, written by `cargo xtask npm`); the glue must call them by those names.
const renaming = JSON.parse(await readFile(join(bindgen, "minified-names.json"), "utf8"));
const glue = join(bindgen, "livevote_sdk.min.js");
await writeFile(glue, renameGlue(await readFile(join(bindgen, "livevote_sdk.js"), "utf8"), renaming, new WebAssembly.Module(wasm)));

// The inlined wasm: raw LZMA (see src/unlzma.js), then base64. Decoded here with the package's
// own decoder, so that a build whose decoder would not give the wasm back fails.
const packed = lzma(wasm);
if (Buffer.compare(Buffer.from(unlzma(packed, wasm.length)), wasm) !== 0) {
  throw new Error("src/unlzma.js does not give the wasm back from its LZMA stream");
}
const inline = join(bindgen, "inline.js");
await writeFile(inline, `export const size = ${wasm.length};\nexport default ${JSON.stringify(packed.toString("base64"))};\n`);

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });

// One build per entry: `format` "es" for modules, "cjs" for `require()` (Node before 20.19 and
// Jest cannot require an ES module), "iife" for the classic script. The framework entries leave
// `livevote` itself outside, so that the app's bundler picks the right build of it and a page
// has one client class, one LivevoteError.
const entries = [
  { source: "index.js", file: "index.js", format: "es" },
  { source: "index.js", file: "index.cjs", format: "cjs" },
  { source: "node.js", file: "node.js", format: "es" },
  { source: "node.js", file: "node.cjs", format: "cjs" },
  { source: "url.js", file: "url.js", format: "es" },
  { source: "global.js", file: "livevote.global.js", format: "iife" },
  { source: "react.js", file: "react.js", format: "es" },
  { source: "react.js", file: "react.cjs", format: "cjs" },
  { source: "vue.js", file: "vue.js", format: "es" },
  { source: "vue.js", file: "vue.cjs", format: "cjs" },
];
for (const entry of entries) {
  await build({
    configFile: false,
    logLevel: "warn",
    publicDir: false,
    resolve: {
      alias: {
        "livevote:glue": glue,
        "livevote:inline": inline,
      },
    },
    build: {
      outDir: dist,
      emptyOutDir: false,
      target: ["es2020", "chrome103", "node20"],
      minify: true,
      reportCompressedSize: false,
      lib: {
        entry: join(here, "src", entry.source),
        formats: [entry.format],
        name: "livevote",
        fileName: () => entry.file,
      },
      // Whitespace too: Vite leaves it in ES-format libraries unless told.
      // `dynamicImportInCjs: false`: the CommonJS builds require("ws"), which Jest can run
      // (it cannot run import() without --experimental-vm-modules).
      rollupOptions: { external: ["ws", "livevote", "react", "vue"], output: { minify: true, dynamicImportInCjs: false } },
    },
  });
}

// The ./url entry must reference the .wasm the way apps' bundlers recognise as an asset.
const urlEntry = join(dist, "url.js");
const urlCode = await readFile(urlEntry, "utf8");
if (!urlCode.includes("__LIVEVOTE_WASM_URL__")) throw new Error("url.js lost its wasm URL placeholder");
await writeFile(urlEntry, urlCode.replace("__LIVEVOTE_WASM_URL__", 'new URL("./livevote_sdk_bg.wasm",import.meta.url)'));
await copyFile(join(bindgen, "livevote_sdk_bg.wasm"), join(dist, "livevote_sdk_bg.wasm"));

// The minifier puts the inlined text where it is used, at the end of the module entries; moved
// to the start (as the classic script already has it), gzip codes most of the JavaScript in
// blocks of its own instead of sharing one table with the base64 text (about 0.5 KB smaller).
const base64 = packed.toString("base64");
for (const file of ["index.js", "node.js", "index.cjs", "node.cjs"]) {
  const path = join(dist, file);
  const code = await readFile(path, "utf8");
  const literal = [`"${base64}"`, "`" + base64 + "`"].find((quoted) => code.includes(quoted));
  if (!literal || code.split(literal).length !== 2 || code.includes("__livevoteWasm")) {
    throw new Error(`${file}: expected the inlined wasm exactly once`);
  }
  // After a "use strict" directive, which must stay the first statement to count.
  const [, directive = "", rest] = /^((?:"use strict";)?)([\s\S]*)$/.exec(code);
  await writeFile(path, `${directive}var __livevoteWasm=${literal};` + rest.replace(literal, "__livevoteWasm"));
}

// `ws` is optional: a bundler must leave the node entry's import of it to Node at run time,
// not resolve it while bundling (webpack warns "Can't resolve 'ws'" where it is not installed,
// as in most Next.js apps). The minifier drops comments, so the hint is put back here. webpack
// ignores that hint on require(): inside a webpack bundle (where `__webpack_require__` exists,
// which webpack knows at build time and so drops the other branch unread) the code takes
// `__non_webpack_require__`, Node's own require.
for (const [file, call, replacement] of [
  ["node.js", /import\(([`"'])ws\1\)/g, 'import(/* webpackIgnore: true */ "ws")'],
  ["node.cjs", /require\(([`"'])ws\1\)/g, '(typeof __webpack_require__=="function"?__non_webpack_require__("ws"):require("ws"))'],
]) {
  const path = join(dist, file);
  const code = await readFile(path, "utf8");
  if ((code.match(call) || []).length !== 1) throw new Error(`${file}: expected one ${call} of ws`);
  await writeFile(path, code.replace(call, () => replacement));
}

// The budgets a page pays (gzip -9, as `cargo xtask npm` reports): a build over them fails.
const budgets = [
  ["index.js", 30 * 1024],
  ["react.js", 2 * 1024],
  ["vue.js", 2 * 1024],
];
for (const [file, limit] of budgets) {
  const bytes = gzipSync(await readFile(join(dist, file)), { level: 9 }).length;
  if (bytes > limit) throw new Error(`${file} is ${bytes} bytes gzipped, over its budget of ${limit}`);
}

/** The wasm-bindgen glue with wasm-opt's short import, export and module names. */
function renameGlue(code, { imports, exports }, module) {
  // A whole identifier (or `wasm.<export>`), not part of a longer one.
  const word = (name) => new RegExp(`(?<![\\w$])${name.replace(/[.$]/g, "\\$&")}(?![\\w$])`, "g");
  const modules = new Set(imports.map(([from]) => from));
  const shortModules = new Set(WebAssembly.Module.imports(module).map((entry) => entry.module));
  if (modules.size !== 1 || shortModules.size !== 1) throw new Error("the glue expects one import module");
  const quoted = JSON.stringify([...modules][0]);
  if (!code.includes(quoted)) throw new Error(`the glue does not name the module ${quoted}`);
  code = code.replaceAll(quoted, JSON.stringify([...shortModules][0]));
  for (const [, name, short] of imports) {
    if (!word(name).test(code)) throw new Error(`the glue does not define the import ${name}`);
    code = code.replace(word(name), () => short);
  }
  for (const [name, short] of exports) code = code.replace(word(`wasm.${name}`), () => `wasm.${short}`);
  for (const name of [...imports.map(([, name]) => name), ...exports.map(([name]) => `wasm.${name}`)]) {
    if (word(name).test(code)) throw new Error(`the glue still uses ${name}`);
  }
  return code;
}

/**
 * `bytes` as a raw LZMA stream with the parameters src/unlzma.js decodes (lc=3, lp=0, pb=0),
 * by xz (XZ Utils), or by Python's lzma module (the same liblzma) where xz is missing.
 */
function lzma(bytes) {
  const options = { input: bytes, maxBuffer: 64 * 1024 * 1024 };
  try {
    return execFileSync("xz", ["--format=raw", "--lzma1=preset=9e,lc=3,lp=0,pb=0", "--stdout"], options);
  } catch (error) {
    if (error.code !== "ENOENT") throw error;
  }
  const script =
    "import lzma, sys; sys.stdout.buffer.write(lzma.compress(sys.stdin.buffer.read(), format=lzma.FORMAT_RAW, " +
    "filters=[{'id': lzma.FILTER_LZMA1, 'preset': 9 | lzma.PRESET_EXTREME, 'lc': 3, 'lp': 0, 'pb': 0}]))";
  return execFileSync("python3", ["-c", script], options);
}
