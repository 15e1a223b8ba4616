//! The TypeScript declarations of the package: real types for tags, options, states, events and
//! errors, which the exported functions name in their signatures; and the signatures that
//! wasm-bindgen cannot write (optional parameters, generic `on`/`off`), declared here instead.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** A tag value: a string (up to 256 bytes) or an integer. `5` and `"5"` are the same value. */
export type TagValue = string | number;
/** Tags: names (1 to 128 bytes) to values. */
export type Tags = Record<string, TagValue>;
/** Request metadata; with server-side auth it carries `key` and `secret`. Never forwarded. */
export type Metadata = Record<string, unknown>;
/** The connection state reported to `on("state")` and `onStateChange`. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";
/**
 * The `code` of every error the SDK throws or rejects with: the server's codes
 * (`bad_request`, `unauthorized`, `rate_limited`, `unavailable`), `closed` (not connected, or
 * the connection ended before the answer) and `timeout` (`timeoutMs` passed without an answer).
 */
export type ErrorCode =
  | "bad_request" | "unauthorized" | "rate_limited" | "unavailable" | "closed" | "timeout";
/** The errors the SDK throws or rejects with: switch on `code`; `message` is the server's text. */
export class TagcastError extends Error {
  constructor(code: ErrorCode, message: string, closeCode?: number, reason?: string);
  readonly name: "TagcastError";
  readonly code: ErrorCode;
  /** For `closed` errors of a connection that ended: its close code (1006 without a close frame). */
  readonly closeCode?: number;
  /** For `closed` errors of a connection that ended: its close reason. */
  readonly reason?: string;
}
/** Options of `connect`. */
export interface ConnectOptions {
  /**
   * Reconnect when the connection drops (default true), re-opening with the same tags and
   * resuming where it left off: the server replays what was sent meanwhile, then a `resumed`
   * event says whether that was everything. Not after `close()`, nor after close code 4001
   * (the server's `POST /disconnect`). When on, a first `connect` that fails is retried too.
   */
  reconnect?: boolean;
  /**
   * Failed attempts to open in a row, after the first, before the client gives up (default
   * 10, about half a minute with the default delays; `Infinity`: never): `connect` rejects, or
   * a reconnecting client goes `closed` with code 1006 and a reason that says so. Browsers hide
   * why a handshake failed, so a refusing server and an unreachable one count alike.
   */
  maxRetries?: number;
  /** The most tags of a connection or a send, checked before the network: the server's `--max-tags` (default 64). */
  maxTags?: number;
  /**
   * Called before every connect and reconnect for a fresh signed-tags token (sent like
   * `token`); may return a promise. `undefined` or `null`: no token. A throw or a rejection
   * counts as a failed attempt. `context.tags`: the tags the attempt opens with (absent
   * when it opens with its token's); `context.token`: the client's own token (the `token`
   * option, one a `setTags` was accepted with, or the one the server sent when its API
   * retagged the connection).
   */
  getToken?: (context: { tags?: Tags; token?: string }) => string | null | undefined | Promise<string | null | undefined>;
  /** First reconnect delay bound in milliseconds (default 250). */
  minDelayMs?: number;
  /** Largest reconnect delay in milliseconds (default 10000). */
  maxDelayMs?: number;
  /** An application's key, sent in the handshake query. */
  key?: string;
  /** The application's secret, sent in the handshake query (prefer `token` in browsers). */
  secret?: string;
  /** A signed-tags token, sent as the `tagcast.token.<token>` subprotocol, never in the URL. */
  token?: string;
  /** Tags added to every `send` (the call's own tags win). */
  defaultTags?: Tags;
  /** Metadata added to every `send` (the call's own entries win). */
  defaultMetadata?: Metadata;
}
/** Options of one `send` or `setTags`. */
export interface RequestOptions {
  /** Reject with `timeout` when the server has not answered within this many milliseconds (default: wait). */
  timeoutMs?: number;
}
/** Options of `setTags`. */
export interface SetTagsOptions extends RequestOptions {
  /** With `--signed-tags`: a token whose tags contain the new ones (it then replaces the connection's token). */
  token?: string;
}
/** What `send` resolves to: how many connections the message was queued for. */
export interface SendResult {
  delivered: number;
}
/** A message routed to the connection, live or replayed after a reconnect. */
export interface TagcastMessage {
  /** The payload, as sent. */
  message: unknown;
  /** The tags of the request that carried it. */
  tags: Tags;
  /** Its position in the server's history (absent when the server keeps none): opaque. */
  pos?: string;
}
/** A state change; after a close, its code and reason when the browser reported them. */
export interface TagcastStateChange {
  state: ConnectionState;
  /** The close code (1006 when the connection failed without one). */
  code?: number;
  /** The close reason. */
  reason?: string;
}
/**
 * After a reconnect: the messages sent meanwhile that the server still had came just before
 * this, each once and in order. When `recovered` is false some may be lost (the server
 * restarted or forgot them): fetch the application's state another way.
 */
export interface TagcastResumed {
  recovered: boolean;
  /** How many messages the server replayed. */
  missed: number;
}
/**
 * The connection's tags changed: after `setTags`, or when the server's `POST /retag` moved it.
 * Messages before this event were routed to the old tags, those after it to the new ones.
 */
export interface TagcastTagsChange {
  /** The connection's tags from now on. */
  tags: Tags;
  /** The position of the last request routed before the change (absent with history off). */
  pos?: string;
}
/** A handler threw (it was also logged with `console.error`). */
export interface TagcastHandlerError {
  /** What it threw. */
  error: unknown;
  /** The event it was handling. */
  event: "message" | "state" | "resumed" | "tags";
}
/** The events of `on` and `off`, and what their handlers receive. */
export interface TagcastEventMap {
  message: TagcastMessage;
  state: TagcastStateChange;
  resumed: TagcastResumed;
  tags: TagcastTagsChange;
  error: TagcastHandlerError;
}
/**
 * Validates tags with the server's rules without connecting, at most `maxTags` of them
 * (default 64); throws a `bad_request` `TagcastError` naming the problem.
 */
export function validateTags(tags: Tags, maxTags?: number): void;
/**
 * Opens a connection with `tags` and resolves once it is open. Rejects with a `TagcastError`
 * whose code is `bad_request` for invalid tags or options, or a URL that is not `ws://` or
 * `wss://` (all before any network use), or `closed` when the server cannot be reached or
 * refuses the handshake (with `reconnect` on, after `maxRetries` more attempts).
 */
export function connect(url: string, tags?: Tags, options?: ConnectOptions): Promise<TagcastClient>;
export interface TagcastClient {
  /**
   * Sends `message` (any JSON value; a string by default on the server) to the connections
   * whose tags contain `tags` (all of them when absent), with the default tags and metadata
   * merged under the call's own. Resolves to `{ delivered }`, or rejects with a `TagcastError`
   * (`bad_request`, `unauthorized`, `rate_limited`, `unavailable`, `closed`, `timeout`);
   * `closed` at once while reconnecting (nothing is queued).
   */
  send(message: unknown, tags?: Tags, metadata?: Metadata, options?: RequestOptions): Promise<SendResult>;
  /**
   * Replaces the connection's tags without reconnecting; resolves to the new tags (the `tags`
   * event fires too). Rejects with `bad_request` for invalid tags, `unauthorized` when a
   * signed-tags token does not allow them (the tags stay as they were), `closed` or `timeout`.
   * A reconnect opens with the new tags.
   */
  setTags(tags: Tags, options?: SetTagsOptions): Promise<Tags>;
  /**
   * Calls `handler` for every `event`; returns a function that removes it. Adding the same
   * handler twice for one event adds it once. A handler that throws is logged with
   * `console.error` and reported to the `error` handlers.
   */
  on<K extends keyof TagcastEventMap>(event: K, handler: (event: TagcastEventMap[K]) => void): () => void;
  /** Removes a handler added with `on`. */
  off<K extends keyof TagcastEventMap>(event: K, handler: (event: TagcastEventMap[K]) => void): void;
}
"#;
