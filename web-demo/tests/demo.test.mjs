// End-to-end: the web demo served by a real `tagcast serve --static web-demo`, driven in
// Debian's headless Chromium by playwright-core. Run by scripts/test-browser.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.TAGCAST_BIN ?? join(root, "target", "debug", "tagcast");
let server;
let base;
let browser;

/** Starts `tagcast serve` on an OS-picked port and resolves with its address. */
function serve(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ["serve", "--host", "127.0.0.1", "--port", "0", ...args], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    const timer = setTimeout(() => reject(new Error(`no 'listening on' line:\n${log}`)), 10000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const found = /listening on (\S+)/.exec(log);
      if (found) {
        clearTimeout(timer);
        resolve({ child, addr: found[1] });
      }
    });
    child.on("exit", (code) => reject(new Error(`tagcast serve exited with ${code}:\n${log}`)));
    child.exited = new Promise((done) => child.on("exit", done));
  });
}

before(async () => {
  server = await serve(["--static", join(root, "web-demo")]);
  base = `http://${server.addr}`;
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
  server?.child.kill("SIGTERM");
});

async function openDemo() {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  await page.goto(`${base}/`);
  await page.waitForFunction(() =>
    document.querySelectorAll('.pane[data-state="open"]').length === 3, null, { timeout: 10000 });
  return { page, problems };
}

test("a message reaches only the panes whose tags match", async () => {
  const { page, problems } = await openDemo();
  await page.fill('[data-testid="message"]', "Bonjour à tous");
  await page.click('[data-testid="send"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="result"]').textContent.startsWith("delivered"));
  const result = await page.textContent('[data-testid="result"]');
  assert.match(result, /^delivered 2 — received by French, French, user 42$/);
  const messages = await page.$$eval(".pane", (panes) =>
    panes.map((p) => [p.querySelector(".pane-name").value, p.querySelectorAll(".messages li").length]));
  assert.deepEqual(messages, [["French", 1], ["English", 0], ["French, user 42", 1]]);
  const first = await page.textContent('[data-testid="pane-1"] .messages li');
  assert.equal(first, '"Bonjour à tous"  {"language":"FR"}');
  mkdirSync(join(root, "target"), { recursive: true });
  await page.screenshot({ path: join(root, "target", "web-demo.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});

test("errors are shown plainly", async () => {
  const { page } = await openDemo();
  // A tag value that breaks the rules is caught in the browser, before the network.
  await page.fill('[data-testid="send-tags"] .value', "x".repeat(300));
  await page.click('[data-testid="send"]');
  await page.waitForFunction(() => document.querySelector("#result").classList.contains("err"));
  assert.match(await page.textContent("#result"), /^bad_request: .*256/);
  // A non-string message is refused by the server (string mode) with its own text.
  await page.fill('[data-testid="send-tags"] .value', "FR");
  await page.fill('[data-testid="message"]', '{"text": "hi"}');
  await page.check("#as-json");
  await page.click('[data-testid="send"]');
  await page.waitForFunction(() => /is not a string/.test(document.querySelector("#result").textContent));
  assert.match(await page.textContent("#result"), /^bad_request: The 'message' property is not a string/);
  await page.close();
});

test("the original docs' plain JavaScript still works", async () => {
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  const url = `ws://${server.addr}`;
  const received = await page.evaluate((url) => new Promise((resolve, reject) => {
    const socket = new WebSocket(url + '/?tags={"language":"FR"}');
    socket.onerror = () => reject(new Error("socket error"));
    socket.onmessage = (event) => resolve(event.data);
    socket.onopen = () => socket.send(JSON.stringify({ message: "Hello !", tags: { language: "FR" } }));
    setTimeout(() => reject(new Error("no message within 5 s")), 5000);
  }), url);
  assert.equal(received, '"Hello !"');
  await page.close();
});

test("panes show a server that went away, and come back when it returns", async () => {
  // The page reaches the server through a proxy on a port of its own, switched to the new
  // server: a port the stopped server released is never expected to stay free (issue 17).
  const own = await serve(["--static", join(root, "web-demo")]);
  const proxy = await proxyTo(own.addr);
  const page = await browser.newPage();
  let again;
  try {
    await page.goto(`${base}/?server=ws://${proxy.addr}`);
    await page.waitForFunction(() => document.querySelectorAll('.pane[data-state="open"]').length === 3);
    // Nothing behind the proxy until the new server is up: new connections are dropped.
    proxy.to(null);
    own.child.kill("SIGTERM");
    await own.child.exited;
    await page.waitForFunction(() =>
      document.querySelectorAll('.pane[data-state="reconnecting"]').length === 3, null, { timeout: 10000 });
    assert.match(await page.textContent('[data-testid="pane-1"] .error'), /Server gone: reconnecting/);
    again = await serve(["--static", join(root, "web-demo")]);
    proxy.to(again.addr);
    await page.waitForFunction(() =>
      document.querySelectorAll('.pane[data-state="open"]').length === 3, null, { timeout: 15000 });
    assert.equal(await page.textContent('[data-testid="pane-1"] .error'), "");
    // A restarted server has a new history: it cannot say nothing was lost.
    await page.waitForFunction(() =>
      document.querySelectorAll('[data-testid="resume"]:not([hidden])').length === 3);
    assert.deepEqual(await badges(page), ["not recovered", "not recovered", "not recovered"]);
  } finally {
    own.child.kill("SIGTERM");
    again?.child.kill("SIGTERM");
    await page.close();
    proxy.close();
  }
});

/** The resume badges of the panes, in order ("" while hidden). */
function badges(page) {
  return page.$$eval('[data-testid="resume"]', (all) => all.map((b) => (b.hidden ? "" : b.textContent)));
}

/**
 * A TCP proxy to `upstream` ("host:port"): `cut()` ends every connection through it (no close
 * frame) and refuses new ones until `mend()`, while the server and its history stay up;
 * `to(other)` sends new connections to another upstream (`null`: none, they are dropped).
 */
async function proxyTo(upstream) {
  const sockets = new Set();
  let refusing = false;
  const server = createServer((down) => {
    if (refusing || upstream === null) return down.destroy();
    const at = upstream.lastIndexOf(":");
    const up = tcpConnect(Number(upstream.slice(at + 1)), upstream.slice(0, at));
    for (const [a, b] of [[down, up], [up, down]]) {
      sockets.add(a);
      a.pipe(b);
      a.on("error", () => b.destroy());
      a.on("close", () => { sockets.delete(a); b.destroy(); });
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    to(other) { upstream = other; },
    cut() { refusing = true; for (const s of sockets) s.destroy(); },
    mend() { refusing = false; },
    close() { this.cut(); server.close(); },
  };
}

test("a pane that lost its connection shows what it missed, and that it recovered", async () => {
  const proxy = await proxyTo(server.addr);
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  try {
    await page.goto(`${base}/?server=ws://${proxy.addr}`);
    await page.waitForFunction(() => document.querySelectorAll('.pane[data-state="open"]').length === 3);
    proxy.cut();
    await page.waitForFunction(() =>
      document.querySelectorAll('.pane[data-state="reconnecting"]').length === 3, null, { timeout: 10000 });
    // Sent while every pane is away, straight to the server.
    const answer = await fetch(`${base}/publish`, {
      method: "POST",
      body: JSON.stringify({ message: "sent while away", tags: { language: "FR" } }),
    });
    assert.equal(answer.status, 200);
    proxy.mend();
    await page.waitForFunction(() =>
      document.querySelectorAll('[data-testid="resume"]:not([hidden])').length === 3, null, { timeout: 15000 });
    assert.deepEqual(await badges(page), ["recovered", "recovered", "recovered"]);
    const missed = await page.$$eval(".pane", (panes) => panes.map((p) =>
      [...p.querySelectorAll(".messages li")].map((li) => [li.textContent, li.classList.contains("missed")])));
    const item = ['"sent while away"  {"language":"FR"}', true];
    assert.deepEqual(missed, [[item], [], [item]]);
    assert.equal(await page.getAttribute('[data-testid="pane-1"] [data-testid="resume"]', "data-missed"), "1");
    assert.equal(await page.getAttribute('[data-testid="pane-2"] [data-testid="resume"]', "data-missed"), "0");
    await page.screenshot({ path: join(root, "target", "web-demo-resumed.png"), fullPage: true });
  } finally {
    await page.close();
    proxy.close();
  }
});

test("a pane's new tags apply in place, without reconnecting", async () => {
  const { page, problems } = await openDemo();
  // Every state the English pane goes through from now on.
  await page.evaluate(() => {
    window.states = [];
    const pane = document.querySelector('[data-testid="pane-2"]');
    new MutationObserver(() => window.states.push(pane.dataset.state))
      .observe(pane, { attributes: true, attributeFilter: ["data-state"] });
  });
  await page.fill('[data-testid="pane-2"] .tag-rows .value', "FR");
  await page.click('[data-testid="pane-2"] [data-testid="apply"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="pane-2"]').dataset.retagged === "1");
  assert.equal(await page.inputValue('[data-testid="pane-2"] .tag-rows .value'), "FR");
  await page.fill('[data-testid="message"]', "à tous les francophones");
  await page.click('[data-testid="send"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="result"]').textContent.startsWith("delivered"));
  assert.match(await page.textContent('[data-testid="result"]'), /^delivered 3 — received by French, English, French, user 42$/);
  assert.deepEqual(await page.evaluate(() => window.states), [], "no reconnect");
  assert.equal(await page.getAttribute('[data-testid="pane-2"]', "data-state"), "open");

  // Tags the server's rules refuse are not applied, and the pane says why.
  await page.fill('[data-testid="pane-2"] .tag-rows .value', "x".repeat(300));
  await page.click('[data-testid="pane-2"] [data-testid="apply"]');
  await page.waitForFunction(() => /Tags not changed/.test(document.querySelector('[data-testid="pane-2"] .error').textContent));
  assert.match(await page.textContent('[data-testid="pane-2"] .error'), /^Tags not changed: bad_request: .*256/);
  assert.deepEqual(await page.evaluate(() => window.states), []);
  assert.deepEqual(problems, []);
  await page.close();
});

test("a pane the server retags (POST /retag) shows its new tags", async () => {
  const own = await serve(["--static", join(root, "web-demo"), "--api-key", "demo-key"]);
  const page = await browser.newPage();
  try {
    await page.goto(`http://${own.addr}/`);
    await page.waitForFunction(() => document.querySelectorAll('.pane[data-state="open"]').length === 3);
    const answer = await fetch(`http://${own.addr}/retag`, {
      method: "POST",
      headers: { authorization: "Bearer demo-key" },
      body: JSON.stringify({ tags: { user: 42 }, set: { room: 7 } }),
    });
    assert.deepEqual([answer.status, await answer.json()], [200, { retagged: 1, refused: 0, partial: false }]);
    await page.waitForFunction(() => document.querySelector('[data-testid="pane-3"]').dataset.retagged === "1");
    const rows = await page.$$eval('[data-testid="pane-3"] .tag-rows > div', (all) =>
      all.map((row) => [row.querySelector(".name").value, row.querySelector(".value").value]));
    assert.deepEqual(rows, [["language", "FR"], ["room", "7"], ["user", "42"]]);
    assert.equal(await page.getAttribute('[data-testid="pane-1"]', "data-retagged"), null);
  } finally {
    await page.close();
    own.child.kill("SIGTERM");
  }
});
