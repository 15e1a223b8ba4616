// Turns wasm-pack's `--target web` output into the published npm package `tagcast`, one
// package for every consumer: bundlers (Vite, webpack 5, ...) resolve "tagcast" through
// `exports`, and plain `<script type="module">` pages import `tagcast.js` by its path. The web
// build loads its .wasm with `new URL("tagcast_bg.wasm", import.meta.url)`, which bundlers turn
// into an asset and browsers fetch as is, so no bundler plugin or WebAssembly ESM integration
// is needed.
//
// It also adds to tagcast.js what wasm-bindgen cannot write: the export of the `TagcastError`
// class (a wasm-bindgen snippet, so that `instanceof` works), and a `Symbol.dispose` and a
// `free()` that close the connection (wasm-bindgen's would only free the Rust side, leaving the
// socket open and reconnecting).
// Usage: node scripts/fix-package.mjs sdk-wasm/pkg
import { readFileSync, writeFileSync, readdirSync, existsSync, appendFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];

// The snippet's folder name carries a hash of the crate: find it.
const snippets = readdirSync(join(dir, "snippets"))
  .map((d) => `snippets/${d}/js/tagcast-error.js`)
  .filter((f) => existsSync(join(dir, f)));
if (snippets.length !== 1) throw new Error(`expected one tagcast-error.js snippet, found ${snippets}`);

const entry = join(dir, "tagcast.js");
if (!readFileSync(entry, "utf8").includes("export { TagcastError }")) {
  appendFileSync(entry, `
// Added by scripts/fix-package.mjs: the error class; Symbol.dispose ends the connection and its
// reconnects (the client stays readable: \`state\` says "closed"; its memory goes with it when
// it is collected); free() does too, then frees it at once.
export { TagcastError } from "./${snippets[0]}";
{
    const free = TagcastClient.prototype.free;
    TagcastClient.prototype.free = function () {
        if (this.__wbg_ptr) this.close();
        free.call(this);
    };
    if (Symbol.dispose) {
        TagcastClient.prototype[Symbol.dispose] = function () {
            if (this.__wbg_ptr) this.close();
        };
    }
}
`);
}

const file = join(dir, "package.json");
const pkg = JSON.parse(readFileSync(file, "utf8"));
pkg.name = "tagcast";
pkg.description =
  "Tagcast browser SDK: a typed, reconnecting WebSocket client that sends and receives tag-routed messages";
pkg.license = "MIT";
pkg.keywords = ["websocket", "pubsub", "tags", "realtime", "wasm"];
pkg.type = "module";
pkg.main = "tagcast.js";
pkg.module = "tagcast.js";
pkg.types = "tagcast.d.ts";
pkg.exports = {
  ".": { types: "./tagcast.d.ts", default: "./tagcast.js" },
  "./tagcast_bg.wasm": "./tagcast_bg.wasm",
  "./package.json": "./package.json",
};
pkg.files = ["tagcast_bg.wasm", "tagcast.js", "tagcast.d.ts", "snippets/", "README.md"];
pkg.sideEffects = ["./tagcast.js", "./snippets/*"];
writeFileSync(file, JSON.stringify(pkg, null, 2) + "\n");
console.log(`${file}: ${pkg.name}@${pkg.version}, types ${pkg.types}`);
