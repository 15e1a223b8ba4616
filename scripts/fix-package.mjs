// Turns wasm-pack's package.json into the published `tagcast` package's.
// Usage: node scripts/fix-package.mjs sdk-wasm/pkg
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
const file = join(dir, "package.json");
const pkg = JSON.parse(readFileSync(file, "utf8"));
pkg.name = "tagcast";
pkg.description =
  "Tagcast browser SDK: a typed, reconnecting WebSocket client that sends and receives tag-routed messages";
pkg.license = "MIT";
pkg.keywords = ["websocket", "pubsub", "tags", "realtime", "wasm"];
pkg.types = pkg.types ?? "tagcast.d.ts";
pkg.sideEffects = pkg.sideEffects ?? ["./snippets/*"];
writeFileSync(file, JSON.stringify(pkg, null, 2) + "\n");
console.log(`${file}: ${pkg.name}@${pkg.version}, types ${pkg.types}`);
