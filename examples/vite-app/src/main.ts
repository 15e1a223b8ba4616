// A small application on the published package: it connects with the tags of the page's query
// (`?server=ws://…&tags={…}`), lists what it receives, and exposes the package's API on
// `window.tagcast` for the tests that drive it.
import init, * as tagcast from "tagcast";
import type { TagcastClient, TagcastMessage, Tags } from "tagcast";

declare global {
  interface Window {
    tagcast: typeof tagcast & { init: typeof init };
    client?: TagcastClient;
  }
}

await init();
window.tagcast = { ...tagcast, init };

const query = new URLSearchParams(location.search);
const server = query.get("server");
if (server) {
  const tags: Tags = JSON.parse(query.get("tags") ?? "{}");
  const client = await tagcast.connect(server, tags, { key: query.get("key") ?? undefined });
  window.client = client;
  const state = document.getElementById("state")!;
  state.textContent = client.state;
  client.on("state", ({ state: now }) => (state.textContent = now));
  client.on("message", ({ message, tags: routed }: TagcastMessage) => {
    const item = document.createElement("li");
    item.textContent = `${JSON.stringify(message)} ${JSON.stringify(routed)}`;
    document.getElementById("messages")!.append(item);
  });
}
document.body.dataset.ready = "true";
