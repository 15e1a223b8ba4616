//! The TypeScript declarations of the package: real types for tags, options, states and errors,
//! which the exported functions name in their signatures.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** A tag value: a string (up to 256 bytes) or an integer. `5` and `"5"` are the same value. */
export type TagValue = string | number;
/** Tags: names (1 to 128 bytes) to values. */
export type Tags = Record<string, TagValue>;
/** Request metadata; with server-side auth it carries `key` and `secret`. Never forwarded. */
export type Metadata = Record<string, unknown>;
/** The connection state reported to `onStateChange`. */
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
  /** Reconnect when the connection drops (default true), re-opening with the same tags. */
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
"#;
