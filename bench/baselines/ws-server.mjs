// Baseline for tagcast-bench: Tagcast's raw mode (PROTOCOL.md sections 1-4)
// written plainly on the `ws` package, to compare a typical Node server with Tagcast.
//
//   node bench/baselines/ws-server.mjs [--host 0.0.0.0] [--port 8080]
//                                      [--tls-cert cert.pem --tls-key key.pem]   (https, wss)
//
// Prints `listening on HOST:PORT` to stderr once listening; SIGINT/SIGTERM exit 0.
// Not covered: auth, envelope mode, /publish, metrics, clusters. JSON.parse cannot tell
// `5.0` from `5`, so `5.0` passes as an integer tag here (Tagcast rejects it).
import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import { WebSocketServer, WebSocket } from 'ws';

const MAX_PAYLOAD = 1024 * 1024; // --max-message-bytes default
const QUEUE_SIZE = 1024; // --queue-size default, in messages (approximated in bytes below)
const MAX_TAGS = 64;

let host = '0.0.0.0';
let port = 8080;
let tlsCert = null;
let tlsKey = null;
for (let i = 2; i < process.argv.length; i += 2) {
  if (process.argv[i] === '--host') host = process.argv[i + 1];
  else if (process.argv[i] === '--port') port = Number(process.argv[i + 1]);
  else if (process.argv[i] === '--tls-cert') tlsCert = fs.readFileSync(process.argv[i + 1]);
  else if (process.argv[i] === '--tls-key') tlsKey = fs.readFileSync(process.argv[i + 1]);
  else { console.error(`unknown argument ${process.argv[i]}`); process.exit(2); }
}

// Validates a tag set (section 1) and returns Map<name, canonical value>, or throws
// an Error naming the problem. Integers are canonicalized to their decimal text so
// that 5 and "5" are the same value.
function parseTags(value) {
  const tags = new Map();
  if (value === undefined || value === null) return tags;
  if (Array.isArray(value)) {
    if (value.length === 0) return tags; // PHP's empty map
    throw new Error('tags must be an object, not an array');
  }
  if (typeof value !== 'object') throw new Error('tags must be an object');
  for (const [name, v] of Object.entries(value)) {
    const n = Buffer.byteLength(name);
    if (n < 1 || n > 128) throw new Error(`tag name ${JSON.stringify(name.slice(0, 40))} must be 1 to 128 bytes`);
    if (typeof v === 'string') {
      if (Buffer.byteLength(v) > 256) throw new Error(`tag ${JSON.stringify(name.slice(0, 40))}: value over 256 bytes`);
      tags.set(name, v);
    } else if (Number.isSafeInteger(v)) {
      tags.set(name, String(v));
    } else {
      throw new Error(`tag ${JSON.stringify(name.slice(0, 40))} must be a string or an integer`);
    }
  }
  if (tags.size > MAX_TAGS) throw new Error(`more than ${MAX_TAGS} tags`);
  return tags;
}

// Inverted index: name -> canonical value -> connections having that tag.
const index = new Map();

function indexAdd(ws) {
  for (const [name, value] of ws.tags) {
    let values = index.get(name);
    if (!values) index.set(name, (values = new Map()));
    let set = values.get(value);
    if (!set) values.set(value, (set = new Set()));
    set.add(ws);
  }
}

function indexRemove(ws) {
  for (const [name, value] of ws.tags) {
    const values = index.get(name);
    const set = values.get(value);
    set.delete(ws);
    if (set.size === 0) values.delete(value);
    if (values.size === 0) index.delete(name);
  }
}

// Sends `payload` (already JSON-encoded) to every connection whose tags contain all of
// `tags`: walk the smallest posting list, check the other pairs on the candidate itself.
function deliver(tags, payload) {
  let candidates = wss.clients; // no tags: everyone
  for (const [name, value] of tags) {
    const set = index.get(name)?.get(value);
    if (!set) return; // nobody has this pair
    if (candidates === wss.clients || set.size < candidates.size) candidates = set;
  }
  // Slow consumer: about QUEUE_SIZE frames of this size waiting (10 = largest frame header).
  const limit = QUEUE_SIZE * (Buffer.byteLength(payload) + 10);
  outer: for (const ws of candidates) {
    for (const [name, value] of tags) if (ws.tags.get(name) !== value) continue outer;
    if (ws.readyState !== WebSocket.OPEN) continue;
    ws.send(payload);
    if (ws.bufferedAmount > limit) ws.terminate();
  }
}

// Close reasons must fit in 123 bytes.
function reason(text) {
  while (Buffer.byteLength(text) > 123) text = text.slice(0, -1);
  return text;
}

function onMessage(data, isBinary) {
  if (isBinary) return this.close(1007, 'binary frames are not accepted');
  let request, tags;
  try {
    request = JSON.parse(data.toString());
    if (typeof request !== 'object' || request === null || Array.isArray(request)) throw new Error('a request must be a JSON object');
    for (const key of Object.keys(request)) {
      if (key !== 'message' && key !== 'tags' && key !== 'metadata') throw new Error(`unknown property '${key.slice(0, 40)}'`);
    }
    if (request.message === undefined || request.message === null) throw new Error("The 'message' property is mandatory !");
    if (typeof request.message !== 'string') throw new Error("The 'message' property is not a string, you must configure a message parser to parse messages !");
    tags = parseTags(request.tags);
  } catch (err) {
    return this.close(1007, reason(err.message));
  }
  deliver(tags, JSON.stringify(request.message)); // encoded once, same string for all
}

const server = (tlsCert ? (handler) => https.createServer({ cert: tlsCert, key: tlsKey }, handler)
  : (handler) => http.createServer(handler))((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' });
  res.end('Connect with a WebSocket client: ws://HOST:PORT/?tags={...}\n');
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_PAYLOAD });

server.on('upgrade', (req, socket, head) => {
  let tags;
  try {
    const raw = new URL(req.url, 'http://localhost').searchParams.get('tags');
    tags = parseTags(raw === null ? undefined : JSON.parse(raw));
  } catch (err) {
    const body = `bad tags: ${err.message}\n`;
    socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.tags = tags;
    indexAdd(ws);
    ws.on('message', onMessage);
    ws.on('error', () => {}); // protocol errors (e.g. 1009 too big): ws closes the socket itself
    ws.on('close', () => indexRemove(ws));
  });
});

server.listen(port, host, () => {
  console.error(`listening on ${server.address().address}:${server.address().port}`);
});

function shutdown() {
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  server.close();
  setTimeout(() => process.exit(0), 100); // let the close frames go out
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
