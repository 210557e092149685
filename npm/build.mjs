// Bundles the package's JavaScript entries into npm/dist with Vite (called by `cargo xtask
// npm` after wasm-bindgen and wasm-opt; not published). Each entry becomes one self-contained
// file so that its size is the size a page pays.
//
// usage: node npm/build.mjs <folder with livevote_sdk.js and livevote_sdk_bg.wasm> <dist folder>
import { readFile, writeFile, mkdir, rm, copyFile } from "node:fs/promises";
import { resolve, join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync, constants } from "node:zlib";
import { build } from "vite";

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
const inline = join(bindgen, "inline.js");
// gzip, then base64 (see inflateWasm in src/core.js for why).
const gzipped = gzipSync(wasm, { level: constants.Z_BEST_COMPRESSION });
await writeFile(inline, `export default ${JSON.stringify(gzipped.toString("base64"))};\n`);

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });

// One build per entry: `format` "es" for modules, "iife" for the classic script.
const entries = [
  { source: "index.js", file: "index.js", format: "es" },
  { source: "node.js", file: "node.js", format: "es" },
  { source: "url.js", file: "url.js", format: "es" },
  { source: "global.js", file: "livevote.global.js", format: "iife" },
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
      rollupOptions: { external: ["ws"], output: { minify: true } },
    },
  });
}

// The ./url entry must reference the .wasm the way apps' bundlers recognise as an asset.
const urlEntry = join(dist, "url.js");
const urlCode = await readFile(urlEntry, "utf8");
if (!urlCode.includes("__LIVEVOTE_WASM_URL__")) throw new Error("url.js lost its wasm URL placeholder");
await writeFile(urlEntry, urlCode.replace("__LIVEVOTE_WASM_URL__", 'new URL("./livevote_sdk_bg.wasm",import.meta.url)'));
await copyFile(join(bindgen, "livevote_sdk_bg.wasm"), join(dist, "livevote_sdk_bg.wasm"));

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
