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
/** The `code` of every error the SDK rejects with. */
export type ErrorCode = "bad_request" | "unauthorized" | "rate_limited" | "unavailable" | "closed";
/** The errors the SDK throws or rejects with: switch on `code`; `message` is the server's text. */
export interface TagcastError extends Error {
  name: "TagcastError";
  code: ErrorCode;
}
/** Options of `connect`. */
export interface ConnectOptions {
  /**
   * Reconnect when the connection drops (default true), re-opening with the same tags and
   * resuming where it left off: the server replays what was sent meanwhile, then a `resumed`
   * event says whether that was everything. Not after `close()`, nor after close code 4001
   * (the server's `POST /disconnect`).
   */
  reconnect?: boolean;
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
/** A handler threw (it was also logged with `console.error`). */
export interface TagcastHandlerError {
  /** What it threw. */
  error: unknown;
  /** The event it was handling. */
  event: "message" | "state" | "resumed";
}
/** The events of `on` and `off`, and what their handlers receive. */
export interface TagcastEventMap {
  message: TagcastMessage;
  state: TagcastStateChange;
  resumed: TagcastResumed;
  error: TagcastHandlerError;
}
/**
 * Opens a connection with `tags` and resolves once it is open. Rejects with a `TagcastError`
 * whose code is `bad_request` for invalid tags or options, or a URL that is not `ws://` or
 * `wss://` (all before any network use), or `closed` when the server cannot be reached or
 * refuses the handshake.
 */
export function connect(url: string, tags?: Tags, options?: ConnectOptions): Promise<TagcastClient>;
export interface TagcastClient {
  /**
   * Sends `message` (any JSON value; a string by default on the server) to the connections
   * whose tags contain `tags` (all of them when absent), with the default tags and metadata
   * merged under the call's own. Resolves to `{ delivered }`, or rejects with a `TagcastError`
   * (`bad_request`, `unauthorized`, `rate_limited`, `unavailable`, `closed`); `closed` at once
   * while reconnecting (nothing is queued).
   */
  send(message: unknown, tags?: Tags, metadata?: Metadata): Promise<SendResult>;
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
