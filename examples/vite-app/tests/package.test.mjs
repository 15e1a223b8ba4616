// The npm package as applications get it: the tarball `npm pack` made (scripts/build-npm) is
// installed into a copy of this Vite application, its types are compiled with `tsc --strict`
// against a typed usage file and the README's examples, the application is built with Vite
// and served by a real `tagcast serve` (and served by Vite's dev server), and headless Chromium
// drives it through the published API; the README's examples run in it, and its plain-page
// example is served next to the installed package. Then the options that need a server configured for them, each against its own real
// server: `--auth` (key/secret, defaultTags, rate_limited), `--signed-tags` (token,
// getToken), a cluster whose Redis goes down (unavailable). Run by scripts/test-browser.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const bin = process.env.TAGCAST_BIN ?? join(root, "target", "debug", "tagcast");
const app = join(root, "target", "vite-app");
const tools = join(root, "node_modules", ".bin");
const scratch = mkdtempSync(join(tmpdir(), "tagcast-package-"));
const API_KEY = "package-test-api-key";
const APPLICATIONS = {
  application1: { secret: "B4ajW3P7jfWEYPZsQV8mnteHg97G67uW", authorizeOpen: true },
  application2: { secret: "33yLWdynhaqm9tYjDFKf8gB8zmAPKdDP", authorizeOpen: false },
};
const authFile = join(scratch, "auth.yaml");
writeFileSync(authFile, "applications:\n" + Object.entries(APPLICATIONS).map(([key, a]) =>
  `  - key: ${key}\n    secret: ${a.secret}\n    authorizeOpen: ${a.authorizeOpen}\n`).join(""));
const CREDENTIALS = { key: "application1", secret: APPLICATIONS.application1.secret };

const children = new Set();
let browser;
let main; // serves the built application, no --auth, with the server API

/** Starts `tagcast serve` on an OS-picked port; resolves once it listens. */
function serve(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ["serve", "--host", "127.0.0.1", "--port", "0", ...args], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    children.add(child);
    let log = "";
    const timer = setTimeout(() => reject(new Error(`no 'listening on' line:\n${log}`)), 10000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const found = /listening on (\S+)/.exec(log);
      if (found) {
        clearTimeout(timer);
        resolve({ child, addr: found[1], ws: `ws://${found[1]}`, http: `http://${found[1]}` });
      }
    });
    child.on("exit", (code) => {
      children.delete(child);
      reject(new Error(`tagcast serve exited with ${code}:\n${log}`));
    });
  });
}

/** A server API call with the API key. */
async function api(server, method, path, body) {
  const answer = await fetch(`${server.http}${path}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}` },
    body: body && JSON.stringify(body),
  });
  assert.equal(answer.status, 200, `${method} ${path}: ${await answer.clone().text()}`);
  return answer.json();
}

/** Polls `check` until it returns a truthy value. */
async function until(check, what, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A TCP proxy to `upstream`: `cut()` ends its connections (no close frame) and refuses new ones
 * until `mend()`; `pause()` holds what the server sends until `resume()`.
 */
async function proxyTo(upstream) {
  const port = Number(upstream.split(":").pop());
  const pairs = new Set();
  let refusing = false;
  let paused = false;
  const server = createServer((down) => {
    if (refusing) return down.destroy();
    const up = tcpConnect(port, "127.0.0.1");
    const pair = { up, down };
    pairs.add(pair);
    down.pipe(up);
    if (!paused) up.pipe(down);
    for (const [a, b] of [[down, up], [up, down]]) {
      a.on("error", () => b.destroy());
      a.on("close", () => { pairs.delete(pair); b.destroy(); });
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    ws: `ws://127.0.0.1:${server.address().port}`,
    cut() { refusing = true; for (const { up, down } of pairs) { up.destroy(); down.destroy(); } },
    mend() { refusing = false; },
    pause() { paused = true; for (const { up, down } of pairs) up.unpipe(down); },
    resume() { paused = false; for (const { up, down } of pairs) up.pipe(down); },
    close() { this.cut(); server.close(); },
  };
}

/** An HS256 JWT signed with an application's secret (PROTOCOL.md §5.1), by node:crypto. */
function signTags(key, tags, seconds = 300) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ key, tags, exp: Math.floor(Date.now() / 1000) + seconds })}`;
  const signature = createHmac("sha256", APPLICATIONS[key].secret).update(body).digest("base64url");
  return `${body}.${signature}`;
}

/** The ```lang blocks of the package's README, in order. */
function readmeBlocks(lang) {
  const text = readFileSync(join(root, "sdk-wasm", "README.md"), "utf8");
  return [...text.matchAll(new RegExp("```" + lang + "\\n([\\s\\S]*?)```", "g"))].map((m) => m[1]);
}

before(async () => {
  // The application, installed from the packed tarball as `npm install` would.
  const tarballs = readdirSync(join(root, "target", "npm")).filter((f) => /^tagcast-.*\.tgz$/.test(f));
  assert.equal(tarballs.length, 1, "scripts/build-npm packs one tarball");
  rmSync(app, { recursive: true, force: true });
  cpSync(join(root, "examples", "vite-app"), app, {
    recursive: true,
    filter: (src) => !/node_modules|dist|tagcast\.tgz|package-lock/.test(src.slice(root.length)),
  });
  cpSync(join(root, "target", "npm", tarballs[0]), join(app, "tagcast.tgz"));
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund"], { cwd: app, stdio: "pipe" });
  // The README's JavaScript examples become TypeScript modules of the application, checked too.
  readmeBlocks("js").forEach((code, i) => writeFileSync(join(app, "src", `readme-${i + 1}.ts`), code));
  execFileSync(join(tools, "vite"), ["build", "--logLevel", "warn"], { cwd: app, stdio: "pipe" });

  main = await serve(["--static", join(app, "dist"), "--api-key", API_KEY]);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-dev-shm-usage"],
  });
});

after(async () => {
  await browser?.close();
  for (const child of children) child.kill("SIGKILL");
  rmSync(scratch, { recursive: true, force: true });
});

/** The `.wasm` requests `page` makes from now on (URLs, pushed as they are made). */
function wasmRequests(page) {
  const urls = [];
  page.on("request", (r) => new URL(r.url()).pathname.endsWith(".wasm") && urls.push(r.url()));
  return urls;
}

/**
 * Opens the built application (with `query`) and waits until it initialized the package;
 * `wasm` lists the page's `.wasm` requests.
 */
async function openApp(query = "") {
  const page = await browser.newPage();
  const wasm = wasmRequests(page);
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  // Chromium logs each refused WebSocket handshake (a retry while a proxy refuses): not a problem.
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("WebSocket connection to") &&
    problems.push(m.text()));
  await page.goto(`${main.http}/${query}`);
  await page.waitForFunction(() => document.body.dataset.ready === "true", null, { timeout: 10000 });
  return { page, problems, wasm };
}

test("the types compile with tsc --strict against a typed usage file and the README's examples", { timeout: 60000 }, () => {
  try {
    execFileSync(join(tools, "tsc"), ["-p", app], { stdio: "pipe" });
  } catch (e) {
    assert.fail(`tsc --strict failed:\n${e.stdout}${e.stderr}`);
  }
  const config = JSON.parse(readFileSync(join(app, "tsconfig.json"), "utf8"));
  assert.equal(config.compilerOptions.strict, true);
  const pkg = JSON.parse(readFileSync(join(app, "node_modules", "tagcast", "package.json"), "utf8"));
  assert.equal(pkg.license, "MIT");
  assert.ok(pkg.description.length > 20);
  assert.deepEqual(pkg.exports["."], { types: "./tagcast.d.ts", default: "./tagcast.js" });
});

test("the Vite application sends and receives through the published package", { timeout: 60000 }, async () => {
  const tags = JSON.stringify({ room: "vite" });
  const { page, problems, wasm } = await openApp(`?server=${main.ws}&tags=${encodeURIComponent(tags)}`);
  await page.waitForFunction(() => document.getElementById("state").textContent === "open");
  const result = await page.evaluate(async (url) => {
    const { connect, init, TagcastError } = window.tagcast;
    // init() again, at once and later, as a module that cannot know the application did: the
    // package is loaded once all the same (checked below).
    await Promise.all([init(), init()]);
    const sender = await connect(url);
    const { delivered } = await sender.send("Bonjour de Vite", { room: "vite" });
    let error;
    try { await connect(url, { flag: true }); } catch (e) { error = e; }
    sender.close();
    return {
      delivered,
      isClass: error instanceof TagcastError && error instanceof Error,
      error: [error.name, error.code, error.message.includes("flag")],
    };
  }, main.ws);
  assert.deepEqual(result, { delivered: 1, isClass: true, error: ["TagcastError", "bad_request", true] });
  await page.waitForFunction(() => document.querySelectorAll("#messages li").length === 1);
  assert.equal(await page.textContent("#messages li"), '"Bonjour de Vite" {"room":"vite"}');
  // The bundle fetched its .wasm as a Vite asset, once, though init() and connect() ran again.
  const assets = readdirSync(join(app, "dist", "assets")).filter((f) => f.endsWith(".wasm"));
  assert.equal(assets.length, 1);
  assert.deepEqual(wasm, [`${main.http}/assets/${assets[0]}`], "the .wasm fetched once");
  assert.deepEqual(problems, []);
  await page.close();
});

test("the Vite dev server serves the package too (optimizeDeps.exclude, as the README says)", { timeout: 60000 }, async () => {
  const { createServer: createVite } = await import("vite");
  // Vite binds the port itself (the next free one from 5173) and reports it.
  const dev = await createVite({ root: app, logLevel: "silent", server: { host: "127.0.0.1", strictPort: false } });
  await dev.listen();
  const page = await browser.newPage();
  const wasm = wasmRequests(page);
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  try {
    const tags = encodeURIComponent(JSON.stringify({ room: "dev" }));
    await page.goto(`${dev.resolvedUrls.local[0]}?server=${main.ws}&tags=${tags}`);
    await page.waitForFunction(() => document.getElementById("state").textContent === "open", null, { timeout: 30000 });
    const delivered = await page.evaluate(() => window.client.send("from the dev server", { room: "dev" }));
    assert.deepEqual(delivered, { delivered: 1 });
    await page.waitForFunction(() => document.querySelectorAll("#messages li").length === 1);
    assert.equal(await page.textContent("#messages li"), '"from the dev server" {"room":"dev"}');
    assert.equal(wasm.length, 1, `the .wasm fetched once: ${wasm.join(", ")}`);
    assert.deepEqual(problems, []);
  } finally {
    await page.close();
    await dev.close();
  }
});

test("every README example runs against a real server", { timeout: 60000 }, async () => {
  const blocks = readmeBlocks("js");
  assert.ok(blocks.length >= 5, `${blocks.length} blocks`);
  const { page, problems, wasm } = await openApp();
  for (const [i, block] of blocks.entries()) {
    // The package's imports become the application's bundled module, the server a real one.
    const code = block
      .replace(/import (\w+)(?:, \{([^}]*)\})? from "tagcast";/, (_, init, names) =>
        `const { default: ${init}${names ? `, ${names}` : ""} } = window.tagcast;`)
      .replaceAll("ws://localhost:8080", main.ws);
    assert.ok(!code.includes("import "), `block ${i + 1}: an import left`);
    await page.evaluate((code) => new (Object.getPrototypeOf(async () => {}).constructor)(code)(), code)
      .catch((e) => assert.fail(`README block ${i + 1} failed: ${e.message}\n${block}`));
  }
  // Each block calls init() after the application did: "once", as the README says.
  assert.equal(wasm.length, 1, `the .wasm fetched once: ${wasm.join(", ")}`);
  assert.deepEqual(problems, []);
  await page.close();

  // The plain-page example, served next to the installed package, as it is written.
  const [html] = readmeBlocks("html");
  writeFileSync(join(app, "plain.html"), html.replaceAll("ws://localhost:8080", main.ws));
  const plain = await serve(["--static", app]);
  const other = await browser.newPage();
  const plainWasm = wasmRequests(other);
  const errors = [];
  other.on("pageerror", (e) => errors.push(e.message));
  other.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await other.goto(`${plain.http}/plain.html`);
  await other.waitForFunction(() => document.querySelectorAll("#messages li").length === 1, null, { timeout: 10000 });
  assert.equal(await other.textContent("#messages li"), "Bonjour !");
  assert.deepEqual(plainWasm, [`${plain.http}/node_modules/tagcast/tagcast_bg.wasm`]);
  assert.deepEqual(errors, []);
  await other.close();
  plain.child.kill("SIGTERM");
});

test("events, unsubscribe, close reasons, retag, timeouts, resume and dispose", { timeout: 60000 }, async () => {
  const proxy = await proxyTo(main.addr);
  const { page, problems } = await openApp();
  try {
    const log = await page.evaluate(async ({ url, proxied }) => {
      const { connect } = window.tagcast;
      const log = [];
      const client = await connect(proxied, { room: "events" }, { minDelayMs: 20, maxDelayMs: 100, maxRetries: Infinity });
      window.eventsClient = client;
      const sender = await connect(url);
      window.sender = sender;
      const stop = client.on("message", ({ message }) => log.push(`message ${message}`));
      client.on("state", ({ state, code }) => log.push(`state ${state} ${code ?? ""}`.trim()));
      client.on("resumed", ({ recovered, missed }) => log.push(`resumed ${recovered} ${missed}`));
      client.on("tags", ({ tags }) => log.push(`tags ${JSON.stringify(tags)}`));
      client.on("error", ({ error, event }) => log.push(`error in ${event}: ${error.message}`));
      const thrower = () => { throw new Error("boom"); };
      const removeThrower = client.on("message", thrower);
      const first = new Promise((r) => client.on("message", r));
      await sender.send("one", { room: "events" });
      await first;
      stop();
      removeThrower();
      await sender.send("two", { room: "events" }); // nobody logs it
      log.push(`setTags ${JSON.stringify(await client.setTags({ room: "moved" }))}`);
      log.push(`client.tags ${JSON.stringify(client.tags)}`);
      return log;
    }, { url: main.ws, proxied: proxy.ws });
    assert.deepEqual(log, [
      "message one",
      "error in message: boom",
      'tags {"room":"moved"}',
      'setTags {"room":"moved"}',
      'client.tags {"room":"moved"}',
    ]);

    // The server's API retags it too; a timeout while the server's answers are held back.
    assert.deepEqual(await api(main, "POST", "/retag", { tags: { room: "moved" }, set: { user: 7 } }),
      { retagged: 1, refused: 0, partial: false });
    await page.waitForFunction(() => window.eventsClient.tags.user === 7);
    proxy.pause();
    const timedOut = await page.evaluate(async () => {
      try {
        // To nobody: with no tags it would reach this client too, and arrive (live or in the
        // resume below) whenever the proxy lets it through.
        await window.eventsClient.send("slow", { user: "nobody" }, undefined, { timeoutMs: 200 });
        return "answered";
      } catch (e) {
        return [e.code, e.message];
      }
    });
    assert.deepEqual(timedOut, ["timeout", "no answer from the server within 200 ms"]);
    proxy.resume();

    // A drop: reconnecting with 1006, the message sent meanwhile replayed, then resumed.
    await page.evaluate(() => { window.log2 = []; window.eventsClient.on("message", ({ message }) => window.log2.push(message)); });
    // A send whose answer is held back when the connection drops: `closed`, with the close.
    proxy.pause();
    await page.evaluate(() => {
      window.pending = window.eventsClient.send("unanswered", { user: "nobody" })
        .catch((e) => [e instanceof window.tagcast.TagcastError, e.code, e.closeCode, e.reason]);
    });
    proxy.cut();
    proxy.resume();
    assert.deepEqual(await page.evaluate(() => window.pending), [true, "closed", 1006, ""]);
    await page.waitForFunction(() => window.eventsClient.state === "reconnecting");
    // The server drops its side of the cut connection a moment later: until then a send
    // would still count it as a recipient (and the resume would replay it all the same).
    const userSeven = encodeURIComponent('{"user":7}');
    await until(async () => (await api(main, "GET", `/presence?tags=${userSeven}`)).connections === 0,
      "the server to drop the cut connection");
    const sent = await page.evaluate(() => window.sender.send("while away", { user: 7 }));
    assert.equal(sent.delivered, 0);
    proxy.mend();
    await page.waitForFunction(() => window.eventsClient.state === "open" && window.log2.length === 1);
    assert.deepEqual(await page.evaluate(() => window.log2), ["while away"]);

    // The server disconnects it for good: closed with 4001 and the reason, no reconnect.
    await page.evaluate(() => {
      window.finalState = new Promise((resolve) => window.eventsClient.on("state", (e) => e.state === "closed" && resolve(e)));
    });
    assert.deepEqual(await api(main, "POST", "/disconnect", { tags: { user: 7 }, reason: "bye" }),
      { disconnected: 1, partial: false });
    assert.deepEqual(await page.evaluate(() => window.finalState), { state: "closed", code: 4001, reason: "bye" });
    const late = await page.evaluate(() => window.eventsClient.send("late").catch((e) => [e.code, e.message]));
    assert.deepEqual(late, ["closed", "not connected (state: closed)"]);

    // free() and Symbol.dispose end the socket and the reconnects.
    // A string, run by Chromium: Node 20 cannot parse `using`.
    const disposed = await page.evaluate(`(async () => {
      const { connect } = window.tagcast;
      const proxied = ${JSON.stringify(proxy.ws)};
      // Retrying for ever: a loaded machine may take a while to mend the proxy.
      const fast = { minDelayMs: 10, maxDelayMs: 20, maxRetries: Infinity };
      window.live = await connect(proxied, { dispose: "live" }, fast);
      const a = await connect(proxied, { dispose: "a" }, fast);
      const b = await connect(proxied, { dispose: "b" }, fast);
      a[Symbol.dispose]();
      b.free();
      a[Symbol.dispose](); // twice is harmless
      let c;
      {
        using scoped = await connect(proxied, { dispose: "c" }, fast);
        c = scoped;
      }
      return [a.state, c.state];
    })()`);
    assert.deepEqual(disposed, ["closed", "closed"]);
    const byDispose = async () =>
      (await api(main, "GET", `/presence?tags=${encodeURIComponent("{}")}&by=dispose`)).values;
    await until(async () => JSON.stringify(await byDispose()) === '{"live":1}', "the disposed sockets to close");
    // After a cut the live client comes back (with the same delays); the disposed ones do not.
    await page.evaluate(() => { window.liveStates = []; window.live.on("state", ({ state }) => window.liveStates.push(state)); });
    proxy.cut();
    proxy.mend();
    await page.waitForFunction(() => window.liveStates.join() === "reconnecting,open");
    await until(async () => (await byDispose()).live === 1, "the live client back");
    assert.deepEqual(await byDispose(), { live: 1 });
    await page.evaluate(() => window.live.close());
    assert.deepEqual(problems.filter((p) => !p.includes("handler threw")), []);
    assert.ok(problems.some((p) => p.includes("tagcast: a 'message' handler threw")), problems.join("\n"));
  } finally {
    await page.close();
    proxy.close();
  }
});

test("--auth: key and secret in the handshake, defaultTags, reconnect: false, rate_limited", { timeout: 60000 }, async () => {
  const server = await serve(["--auth", authFile, "--authorize-open", "false", "--rate-limit", "5"]);
  const proxy = await proxyTo(server.addr);
  const { page } = await openApp();
  try {
    const result = await page.evaluate(async ({ url, proxied, credentials, secret2 }) => {
      const { connect } = window.tagcast;
      const outcome = async (p) => p.then((c) => { c.close(); return "open"; }, (e) => e.code);
      const once = { reconnect: false };
      const r = {};
      // --authorize-open false: opening needs an application's key (and secret for application2).
      r.anonymous = await outcome(connect(url, {}, once));
      r.key1 = await outcome(connect(url, {}, { ...once, key: "application1" }));
      r.key2 = await outcome(connect(url, {}, { ...once, key: "application2" }));
      r.key2secret = await outcome(connect(url, {}, { ...once, key: "application2", secret: secret2 }));

      // defaultTags and defaultMetadata are merged under each send's own.
      const listener = await connect(url, { room: "d", user: 1 }, { ...once, key: "application1" });
      const got = new Promise((resolve) => listener.on("message", resolve));
      const sender = await connect(url, {}, {
        ...once, key: "application1", defaultTags: { room: "d" }, defaultMetadata: credentials,
      });
      r.delivered = (await sender.send("merged", { user: 1 })).delivered;
      r.got = await got;
      // Without the credentials in metadata, --auth refuses the send.
      const bare = await connect(url, {}, { ...once, key: "application1" });
      r.unauthorized = await bare.send("x").catch((e) => e.code);
      bare.close();

      // --rate-limit 5: a burst of 20 gets rate_limited answers, and the connection stays open.
      const codes = await Promise.all(Array.from({ length: 20 }, (_, i) =>
        sender.send(`burst ${i}`, { user: 2 }).then(() => "ok", (e) => e.code)));
      r.rateLimited = codes.includes("rate_limited") && codes.includes("ok") &&
        codes.every((c) => c === "ok" || c === "rate_limited");
      r.senderState = sender.state;
      sender.close();

      // reconnect: false: a drop closes the client with the close's code, and it stays closed.
      const fragile = await connect(proxied, {}, { ...once, key: "application1" });
      window.fragile = fragile;
      window.fragileStates = [];
      fragile.on("state", (e) => window.fragileStates.push(e));
      listener.close();
      return r;
    }, { url: server.ws, proxied: proxy.ws, credentials: CREDENTIALS, secret2: APPLICATIONS.application2.secret });
    assert.deepEqual(result, {
      anonymous: "closed", key1: "open", key2: "closed", key2secret: "open",
      delivered: 1, got: { message: "merged", tags: { room: "d", user: 1 }, pos: result.got.pos },
      unauthorized: "unauthorized", rateLimited: true, senderState: "open",
    });
    assert.match(result.got.pos, /^[A-Za-z0-9._~-]+$/);
    proxy.cut();
    await page.waitForFunction(() => window.fragile.state === "closed");
    proxy.mend();
    assert.deepEqual(await page.evaluate(() => window.fragileStates), [{ state: "closed", code: 1006, reason: "" }]);
  } finally {
    await page.close();
    proxy.close();
    server.child.kill("SIGTERM");
  }
});

test("--signed-tags: token and getToken, before every connect and reconnect", { timeout: 60000 }, async () => {
  const server = await serve(["--auth", authFile, "--signed-tags", "--api-key", API_KEY]);
  const proxy = await proxyTo(server.addr);
  const { page } = await openApp();
  try {
    const tokens = { user42: signTags("application1", { user: 42 }), wide: signTags("application1", { user: 42, room: 1 }) };
    const result = await page.evaluate(async ({ url, proxied, tokens }) => {
      const { connect } = window.tagcast;
      const once = { reconnect: false };
      const r = {};
      r.noToken = await connect(url, {}, once).then(() => "open", (e) => e.code);
      r.badToken = await connect(url, {}, { ...once, token: "not.a.jwt" }).then(() => "open", (e) => e.code);
      const withToken = await connect(proxied, undefined, { token: tokens.user42, minDelayMs: 20, maxDelayMs: 100, maxRetries: Infinity });
      window.withToken = withToken;
      r.tags = withToken.tags;
      // Tags the token does not allow are refused, and stay as they were.
      r.wider = await withToken.setTags({ user: 42, room: 1 }).catch((e) => e.code);
      // A token that allows them does; it becomes the connection's.
      r.withWide = await withToken.setTags({ user: 42, room: 1 }, { token: tokens.wide });
      window.wideBack = new Promise((resolve) => withToken.on("resumed", resolve));

      return r;
    }, { url: server.ws, proxied: proxy.ws, tokens });
    assert.deepEqual(result, {
      noToken: "closed", badToken: "closed", tags: { user: 42 }, wider: "unauthorized",
      withWide: { user: 42, room: 1 },
    });
    // It reconnects with its new tags and the token that allows them (the first would not).
    proxy.cut();
    await page.waitForFunction(() => window.withToken.state === "reconnecting");
    proxy.mend();
    assert.deepEqual(await page.evaluate(() => window.wideBack), { recovered: true, missed: 0 });
    assert.deepEqual(await page.evaluate(() => window.withToken.tags), { user: 42, room: 1 });
    // The server's API moves it to room 2: the tags frame carries a token for its new tags, so
    // its next reconnect is not refused (its own token allows room 1 only).
    await page.evaluate(() => {
      window.moved = new Promise((resolve) => window.withToken.on("tags", resolve));
      window.movedBack = new Promise((resolve) => window.withToken.on("resumed", resolve));
    });
    const retag = await api(server, "POST", "/retag", { tags: { user: 42 }, set: { room: 2 } });
    assert.deepEqual(retag, { retagged: 1, refused: 0, partial: false });
    assert.deepEqual((await page.evaluate(() => window.moved)).tags, { user: 42, room: 2 });
    proxy.cut();
    await page.waitForFunction(() => window.withToken.state === "reconnecting");
    proxy.mend();
    assert.deepEqual(await page.evaluate(() => window.movedBack), { recovered: true, missed: 0 });
    await page.evaluate(() => {
      window.inRoom2 = new Promise((resolve) => window.withToken.on("message", ({ message }) => resolve(message)));
    });
    const toRoom2 = await api(server, "POST", "/publish", { message: "in room 2", tags: { room: 2 } });
    assert.deepEqual(toRoom2, { delivered: 1 });
    assert.equal(await page.evaluate(() => window.inRoom2), "in room 2");
    await page.evaluate(() => window.withToken.close());

    const asked = await page.evaluate(async ({ proxied, tokens }) => {
      const { connect } = window.tagcast;
      // getToken: asked before the first connect and before each reconnect.
      window.asked = 0;
      window.contexts = [];
      const client = await connect(proxied, undefined, {
        minDelayMs: 20, maxDelayMs: 100, maxRetries: Infinity,
        // Told the tags it opens with and the client's own token: after an API retag, the
        // server's token for the new tags.
        getToken: async (context) => {
          window.asked += 1;
          window.contexts.push(context);
          return context.token ?? tokens.user42;
        },
      });
      window.tokenClient = client;
      window.resumed = new Promise((resolve) => client.on("resumed", resolve));
      return window.asked;
    }, { proxied: proxy.ws, tokens });
    assert.equal(asked, 1);
    // A first message before the cut: the client then has a position to resume from. Cut
    // before the server's first frame (its position), the client would have none and rightly
    // say `recovered: false`.
    await page.evaluate(() => {
      window.first = new Promise((resolve) => window.tokenClient.on("message", ({ message }) => resolve(message)));
    });
    await api(server, "POST", "/publish", { message: "first", tags: { user: 42 } });
    assert.equal(await page.evaluate(() => window.first), "first");
    proxy.cut();
    await page.waitForFunction(() => window.tokenClient.state === "reconnecting");
    proxy.mend();
    assert.deepEqual(await page.evaluate(() => window.resumed), { recovered: true, missed: 0 });
    assert.ok(await page.evaluate(() => window.asked) >= 2);
    // The reconnected client is the token's: a publish to user 42 reaches it.
    await page.evaluate(() => {
      window.received = new Promise((resolve) => window.tokenClient.on("message", ({ message }) => resolve(message)));
    });
    await api(server, "POST", "/publish", { message: "for 42", tags: { user: 42 } });
    assert.equal(await page.evaluate(() => window.received), "for 42");
    // The server's API moves it; getToken is told its new tags and the server's token.
    await page.evaluate(() => {
      window.moved = new Promise((resolve) => window.tokenClient.on("tags", resolve));
      window.movedBack = new Promise((resolve) => window.tokenClient.on("resumed", resolve));
    });
    await api(server, "POST", "/retag", { tags: { user: 42 }, set: { room: 5 } });
    assert.deepEqual((await page.evaluate(() => window.moved)).tags, { user: 42, room: 5 });
    proxy.cut();
    await page.waitForFunction(() => window.tokenClient.state === "reconnecting");
    proxy.mend();
    assert.deepEqual(await page.evaluate(() => window.movedBack), { recovered: true, missed: 0 });
    const contexts = await page.evaluate(() => window.contexts);
    assert.deepEqual(contexts[0], {}, "opened without tags and without a token of its own");
    const last = contexts[contexts.length - 1];
    assert.deepEqual(last.tags, { user: 42, room: 5 });
    assert.equal(typeof last.token, "string");
    await page.evaluate(() => {
      window.inRoom5 = new Promise((resolve) => window.tokenClient.on("message", ({ message }) => resolve(message)));
    });
    await api(server, "POST", "/publish", { message: "in room 5", tags: { room: 5 } });
    assert.equal(await page.evaluate(() => window.inRoom5), "in room 5");
    await page.evaluate(() => window.tokenClient.close());
  } finally {
    await page.close();
    proxy.close();
    server.child.kill("SIGTERM");
  }
});

test("unavailable: a cluster node whose Redis went down refuses sends, the connection stays", { timeout: 60000 }, async () => {
  const dir = mkdtempSync(join(scratch, "redis-"));
  const socket = join(dir, "redis.sock");
  const redis = spawn("redis-server", ["--port", "0", "--unixsocket", socket, "--save", "", "--appendonly", "no", "--dir", dir],
    { stdio: ["ignore", "pipe", "pipe"] });
  children.add(redis);
  let redisLog = "";
  redis.stdout.on("data", (chunk) => (redisLog += chunk));
  redis.stderr.on("data", (chunk) => (redisLog += chunk));
  // Settles when redis-server ends (or could not start), saying how.
  const redisEnded = new Promise((resolve) => {
    redis.on("error", (e) => resolve(`could not start: ${e.message}`));
    redis.on("exit", (code, signal) => resolve(`exited with ${signal ?? code}`));
  });
  const redisFailed = redisEnded.then((how) => {
    throw new Error(`redis-server ${how} before the node connected to it:\n${redisLog}`);
  });
  redisFailed.catch(() => {}); // awaited below only while the node starts
  let redisGone = false;
  redisEnded.then(() => (redisGone = true));
  try {
    // The node's attempts fail until Redis listens; a redis-server that ended fails the test at
    // once, saying so, instead of a retrying loop's timeout (which stops trying too).
    const server = await Promise.race([
      until(() => redisGone ? redisFailed : serve(["--auth", authFile, "--redis", `redis+unix://${socket}`]).catch(() => null),
        "redis and the node"),
      redisFailed,
    ]);
    const { page } = await openApp();
    await page.evaluate(async ({ url, credentials }) => {
      window.clusterClient = await window.tagcast.connect(url, {}, { defaultMetadata: credentials });
      await window.clusterClient.send("while redis is up");
    }, { url: server.ws, credentials: CREDENTIALS });
    redis.kill("SIGKILL");
    await redisEnded;
    await until(async () => (await fetch(`${server.http}/healthz`)).status === 503, "/healthz 503");
    const refused = await page.evaluate(() => window.clusterClient.send("lost?").catch((e) => [e.code, e.name]));
    assert.deepEqual(refused, ["unavailable", "TagcastError"]);
    assert.equal(await page.evaluate(() => window.clusterClient.state), "open");
    await page.close();
    server.child.kill("SIGTERM");
  } finally {
    redis.kill("SIGKILL");
  }
});
