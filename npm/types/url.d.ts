/** Types of `livevote/url`: the same API as the default entry, with the wasm as a separate file. */
export * from "./index.js";
