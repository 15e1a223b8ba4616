// The Tagcast web demo: several connections (panes) on one page, each with its own tags, and a
// composer that sends a message and shows which panes received it. A pane that loses its
// connection reconnects by itself and resumes: the messages it missed arrive marked "missed",
// and a badge says whether the server could replay everything ("recovered") or not. New tags
// apply to an open pane in place (`setTags`), without reconnecting.
import init, { connect, validateTags } from "./pkg/tagcast.js";

const $ = (selector, root = document) => root.querySelector(selector);
const defaultUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host || "localhost:8080"}`;
$("#server-url").value = new URLSearchParams(location.search).get("server") ?? defaultUrl;

/** Adds a name/value row to a tag or metadata list. */
function addRow(container, name = "", value = "") {
  const row = document.createElement("div");
  row.innerHTML = `<input class="name" placeholder="name"><input class="value" placeholder="value"><button type="button" title="Remove">−</button>`;
  $(".name", row).value = name;
  $(".value", row).value = value;
  $("button", row).onclick = () => row.remove();
  container.append(row);
}

/** Reads rows into an object; integers typed as such stay numbers (5 and "5" match anyway). */
function readRows(container) {
  const out = {};
  for (const row of container.children) {
    const name = $(".name", row).value;
    const value = $(".value", row).value;
    if (name === "" && value === "") continue;
    out[name] = /^-?(0|[1-9][0-9]{0,17})$/.test(value) ? Number(value) : value;
  }
  return out;
}

function options() {
  const key = $("#key").value.trim();
  const secret = $("#secret").value;
  const opts = { reconnect: true, minDelayMs: 200, maxDelayMs: 3000 };
  if (key) {
    opts.key = key;
    opts.defaultMetadata = { key, secret };
    if (secret) opts.secret = secret;
  }
  return opts;
}

let paneCount = 0;
const panes = new Set();

class Pane {
  constructor(name, tags) {
    this.el = $("#pane-template").content.firstElementChild.cloneNode(true);
    this.el.dataset.testid = `pane-${++paneCount}`;
    $(".pane-name", this.el).value = name;
    for (const [k, v] of Object.entries(tags)) addRow($(".tag-rows", this.el), k, String(v));
    $(".add-tag", this.el).onclick = () => addRow($(".tag-rows", this.el));
    $(".apply", this.el).onclick = () => this.applyTags();
    $(".toggle", this.el).onclick = () => (this.client ? this.disconnect() : this.reconnect());
    $(".remove", this.el).onclick = () => { this.disconnect(); this.el.remove(); panes.delete(this); };
    $("#panes").append(this.el);
    panes.add(this);
    this.reconnect();
  }

  setState(state) {
    this.el.dataset.state = state;
    $(".state", this.el).textContent = state;
    $(".toggle", this.el).textContent = state === "closed" ? "Connect" : "Disconnect";
  }

  showError(text) {
    $(".error", this.el).textContent = text;
  }

  /** The badge after a reconnect: `recovered` when nothing sent meanwhile is missing. */
  showResumed(recovered, missed) {
    const badge = $(".resume", this.el);
    badge.hidden = false;
    badge.className = `resume ${recovered ? "recovered" : "lost"}`;
    badge.textContent = recovered ? "recovered" : "not recovered";
    badge.dataset.missed = String(missed);
    badge.title = recovered
      ? `Reconnected; ${missed} missed message(s) replayed`
      : `Reconnected, but messages sent meanwhile may be lost (${missed} replayed): reload what this pane shows`;
  }

  disconnect() {
    this.client?.close();
    this.client = null;
    this.setState("closed");
  }

  /** New tags for an open pane: changed in place (no reconnect), else a new connection. */
  async applyTags() {
    const tags = readRows($(".tag-rows", this.el));
    if (this.client?.state !== "open") return this.reconnect();
    this.showError("");
    try {
      await this.client.setTags(tags, { timeoutMs: 5000 });
    } catch (error) {
      this.showError(`Tags not changed: ${error.code}: ${error.message}`);
    }
  }

  /** Shows the tags the server confirmed (after `setTags`, or a `POST /retag`). */
  showTags(tags) {
    const rows = $(".tag-rows", this.el);
    rows.replaceChildren();
    for (const [k, v] of Object.entries(tags)) addRow(rows, k, String(v));
    this.el.dataset.retagged = String(Number(this.el.dataset.retagged ?? 0) + 1);
  }

  async reconnect() {
    this.disconnect();
    this.showError("");
    $(".resume", this.el).hidden = true;
    const tags = readRows($(".tag-rows", this.el));
    try {
      validateTags(tags); // the server's own rules, before the network
    } catch (error) {
      this.showError(`Bad tags: ${error.message}`);
      return;
    }
    this.setState("connecting");
    try {
      const client = await connect($("#server-url").value, tags, options());
      this.client = client;
      this.setState(client.state);
      // Between a drop and `resumed`, what arrives is the replay of what was missed.
      let away = false;
      client.on("state", ({ state, code }) => {
        this.setState(state);
        if (state === "reconnecting") away = true;
        this.showError(state === "reconnecting" ? `Server gone: reconnecting… (close code ${code ?? "unknown"})` : "");
      });
      client.on("message", ({ message, tags: msgTags }) => this.receive(message, msgTags, away));
      client.on("resumed", ({ recovered, missed }) => {
        away = false;
        this.showResumed(recovered, missed);
      });
      client.on("tags", ({ tags: now }) => this.showTags(now));
      client.on("error", ({ error, event }) => this.showError(`The '${event}' handler failed: ${error}`));
    } catch (error) {
      this.setState("closed");
      this.showError(`${error.code}: ${error.message}`);
    }
  }

  receive(message, tags, missed = false) {
    const item = document.createElement("li");
    item.className = missed ? "fresh missed" : "fresh";
    if (missed) item.title = "Sent while this pane was away; replayed after the reconnect";
    item.textContent = `${JSON.stringify(message)}  ${JSON.stringify(tags)}`;
    $(".messages", this.el).prepend(item);
    setTimeout(() => item.classList.remove("fresh"), 1500);
    this.el.classList.add("hit");
    setTimeout(() => this.el.classList.remove("hit"), 1500);
    this.lastReceived = performance.now();
  }
}

// The composer sends through its own connection (no tags: it listens to nothing in particular).
let sender = null;
async function senderClient() {
  if (!sender || sender.state === "closed") sender = await connect($("#server-url").value, undefined, options());
  return sender;
}

async function send() {
  const result = $("#result");
  result.className = "";
  result.textContent = "Sending…";
  let message = $("#message").value;
  if ($("#as-json").checked) {
    try { message = JSON.parse(message); } catch (e) {
      result.className = "err";
      result.textContent = `The message is not valid JSON: ${e.message}`;
      return;
    }
  }
  const tags = readRows($("#send-tags"));
  const metadata = readRows($("#send-metadata"));
  const sentAt = performance.now();
  try {
    validateTags(tags);
    const client = await senderClient();
    const { delivered } = await client.send(message, tags, metadata);
    // The ack comes after the deliveries were queued; give the panes a moment to receive.
    await new Promise((r) => setTimeout(r, 300));
    const names = [...panes]
      .filter((p) => p.lastReceived >= sentAt)
      .map((p) => $(".pane-name", p.el).value);
    result.className = "ok";
    result.textContent = `delivered ${delivered}` + (names.length ? ` — received by ${names.join(", ")}` : "");
  } catch (error) {
    result.className = "err";
    result.textContent = `${error.code ?? "error"}: ${error.message}`;
  }
}

for (const button of document.querySelectorAll(".add-row")) {
  button.onclick = () => addRow(document.getElementById(button.dataset.for));
}
$("#send").onclick = send;
$("#add-pane").onclick = () => new Pane(`pane ${paneCount + 1}`, {});

await init();
addRow($("#send-tags"), "language", "FR");
new Pane("French", { language: "FR" });
new Pane("English", { language: "EN" });
new Pane("French, user 42", { language: "FR", user: 42 });
