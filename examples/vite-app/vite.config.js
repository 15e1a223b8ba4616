// No plugin needed: the package's web build loads its .wasm with
// `new URL("tagcast_bg.wasm", import.meta.url)`, which Vite emits as an asset.
export default {
  // The dev server's dependency pre-bundling would move tagcast.js away from its .wasm.
  optimizeDeps: { exclude: ["tagcast"] },
  build: { target: "es2022" },
};
