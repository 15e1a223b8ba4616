// Compiled by `tsc --strict` (scripts/test-browser), never run: every part of the package's
// API used as its types say, and mistakes the types must refuse (`@ts-expect-error`).
import init, { connect, validateTags, TagcastError } from "tagcast";
import type {
  ConnectOptions, ConnectionState, ErrorCode, Metadata, SendResult, TagcastClient,
  TagcastEventMap, TagcastHandlerError, TagcastMessage, TagcastResumed, TagcastStateChange,
  TagcastTagsChange, Tags,
} from "tagcast";

export async function usage(): Promise<void> {
  await init();
  const options: ConnectOptions = {
    reconnect: true, minDelayMs: 100, maxDelayMs: 5000, maxRetries: Infinity, maxTags: 128,
    key: "application1", secret: "s", token: "t",
    getToken: async () => (await fetch("/token")).text(),
    defaultTags: { app: "chat" }, defaultMetadata: { key: "k", secret: "s" },
  };
  const client: TagcastClient = await connect("ws://localhost:8080", { room: 42, lang: "FR" }, options);
  await connect("ws://localhost:8080");
  await connect("ws://localhost:8080", undefined, { getToken: () => null });

  const result: SendResult = await client.send("hi");
  const delivered: number = result.delivered;
  await client.send({ any: ["json"] }, { room: 42 }, { trace: 1 }, { timeoutMs: 500 });
  const now: Tags = await client.setTags({ room: 43 }, { timeoutMs: 1000, token: "t" });
  const current: Tags = client.tags;
  const state: ConnectionState = client.state;

  const stop: () => void = client.on("message", (e: TagcastMessage) => {
    const text: unknown = e.message;
    const pos: string | undefined = e.pos;
    console.log(text, e.tags.room, pos);
  });
  client.on("state", ({ state, code, reason }: TagcastStateChange) => console.log(state, code ?? 0, reason ?? ""));
  client.on("resumed", ({ recovered, missed }: TagcastResumed) => console.log(recovered === true, missed + 1));
  client.on("tags", ({ tags, pos }: TagcastTagsChange) => console.log(tags, pos));
  const onError = ({ error, event }: TagcastHandlerError) => console.log(error, event);
  client.on("error", onError);
  client.off("error", onError);
  stop();
  client.onMessage((message, tags, pos) => console.log(message, tags, pos));
  client.onStateChange((s: ConnectionState) => console.log(s));
  const handler = <K extends keyof TagcastEventMap>(k: K) => (e: TagcastEventMap[K]) => console.log(k, e);
  client.on("resumed", handler("resumed"));

  try {
    validateTags({ a: 1 }, 10);
    validateTags({ a: "1" });
    await client.send("x");
  } catch (error) {
    if (error instanceof TagcastError) {
      const code: ErrorCode = error.code;
      const closeCode: number | undefined = error.closeCode;
      const reason: string | undefined = error.reason;
      const message: string = error.message;
      console.log(code, closeCode, reason, message, error.name === "TagcastError");
      switch (error.code) {
        case "bad_request": case "unauthorized": case "rate_limited": case "unavailable":
        case "closed": case "timeout": break;
        default: { const never: never = error.code; console.log(never); }
      }
    }
  }
  const metadata: Metadata = { anything: { nested: true } };
  console.log(delivered, now, current, state, metadata);

  {
    using disposable = await connect("ws://localhost:8080");
    disposable.on("message", () => {});
  } // closed here
  client.close();
  client.free();

  // @ts-expect-error: tag values are strings or integers
  await client.send("x", { flag: true });
  // @ts-expect-error: no such event
  client.on("mesage", () => {});
  // @ts-expect-error: a message handler gets a TagcastMessage, not a state change
  client.on("message", (e: TagcastStateChange) => console.log(e));
  // @ts-expect-error: timeoutMs is a number
  await client.send("x", undefined, undefined, { timeoutMs: "5" });
  // @ts-expect-error: setTags needs tags
  await client.setTags();
  // @ts-expect-error: not an option
  await connect("ws://x", {}, { reconect: false });
  // @ts-expect-error: not an error code
  const wrong: ErrorCode = "oops";
  console.log(wrong);
}
