// The framework entries' declarations, compiled with `tsc --strict` (moduleResolution bundler,
// as Vite and Next.js apps use) against the packed package, React's and Vue's own types: the
// hooks and composables type what they return, and misuse fails to compile.
import { after, test } from "node:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cleanUp, project, root, run } from "./harness.mjs";

after(cleanUp);

const REACT = `
import { createElement, type ReactNode } from "react";
import { LivevoteProvider, useBalance, useEvent, useEvents, useLivevote, useStatus } from "livevote/react";
import type { ConnectionState, EventState, LivevoteClient } from "livevote";

export function Votes(): ReactNode {
  const state: ConnectionState = useStatus().state;
  const events: readonly EventState[] = useEvents();
  const first: EventState | undefined = useEvent("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01");
  const balance: number | null = useBalance();
  const { client, snapshot } = useLivevote();
  const maybe: LivevoteClient | null = client;
  // @ts-expect-error: the client is null until connected
  useLivevote().client.close();
  return createElement("p", null, state, events.length, first?.title, balance, snapshot.stale, maybe === null);
}
export const app = createElement(LivevoteProvider, { options: { url: "https://votes.example.com", token: "t" } }, createElement(Votes));
// @ts-expect-error: options need a url
createElement(LivevoteProvider, { options: { token: "t" } });
`;

const VUE = `
import { defineComponent, h, type ComputedRef } from "vue";
import { injectLivevote, provideLivevote, useLivevote } from "livevote/vue";
import type { ConnectionStatus, EventState } from "livevote";

export const Parent = defineComponent({
  setup() {
    provideLivevote({ url: "https://votes.example.com", token: "t" });
    const { status, events, balance, client, event } = useLivevote({ url: "https://votes.example.com", getToken: async () => "t" });
    const state: ConnectionStatus["state"] = status.value.state;
    const list: readonly EventState[] = events.value;
    const one: ComputedRef<EventState | undefined> = event(() => "3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01");
    // @ts-expect-error: refs are read-only
    balance.value = 3;
    return () => h("p", [state, list.length, one.value?.title, client.value?.status().state]);
  },
});
export const Child = defineComponent({ setup: () => { const { status } = injectLivevote(); return () => h("p", status.value.state); } });
`;

test("livevote/react and livevote/vue types compile a strict consumer", async () => {
  const folder = await project("types");
  await writeFile(join(folder, "react-consumer.ts"), REACT);
  await writeFile(join(folder, "vue-consumer.ts"), VUE);
  await writeFile(join(folder, "package.json"), JSON.stringify({ type: "module" }));
  await writeFile(
    join(folder, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, target: "es2020", module: "esnext", moduleResolution: "bundler", lib: ["es2020", "dom"], skipLibCheck: true },
      files: ["react-consumer.ts", "vue-consumer.ts"],
    }),
  );
  await run(join(root, "node_modules/.bin/tsc"), ["-p", folder]).catch((error) => {
    throw new Error(`tsc failed:\n${error.stdout}\n${error.stderr}`);
  });
});
