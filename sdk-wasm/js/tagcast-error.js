// The class of every error the Tagcast browser SDK throws or rejects with. The wasm module
// constructs it (a wasm-bindgen snippet); the package's entry re-exports it, so that
// `error instanceof TagcastError` works in applications.

/** An error of the Tagcast SDK: switch on `code`; `message` says what happened. */
export class TagcastError extends Error {
  /**
   * @param {string} code `bad_request`, `unauthorized`, `rate_limited`, `unavailable`,
   *   `closed` or `timeout`
   * @param {string} message what happened (the server's own text for server errors)
   * @param {number} [closeCode] the close code of the connection, when it ended with one
   * @param {string} [reason] the close reason of the connection, when it ended with one
   */
  constructor(code, message, closeCode, reason) {
    super(message);
    this.name = "TagcastError";
    this.code = code;
    if (closeCode !== undefined) this.closeCode = closeCode;
    if (reason !== undefined) this.reason = reason;
  }
}
