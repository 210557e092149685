// A consumer of the `livevote` package, compiled with `tsc --noEmit --strict` by
// packaging.test.mjs against the packed package: proves the declarations cover the API and
// every payload, and that misuse fails to compile.
import { connect, LivevoteError } from "livevote";
import type {
  ConnectionStatus,
  EventState,
  LivevoteClient,
  ServerMessage,
  Snapshot,
  SystemNoticePayload,
  VoteResult,
  ClientCommand,
  EventView,
  ErrorBody,
} from "livevote";
import { connect as connectWithUrl } from "livevote/url";

async function main(): Promise<void> {
  const client: LivevoteClient = await connect({
    url: "https://votes.example.com",
    streamerId: "a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d",
    getToken: async () => "token",
    channels: ["user:9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"],
    heartbeatIntervalMs: 20_000,
    pongTimeoutMs: 10_000,
  });
  const off = client.on("event", (event: EventState) => {
    const votes: number = event.totals[event.options[0].id] ?? 0;
    const winner: string | undefined = event.result?.optionId;
    const open: boolean = event.status === "open" && !event.stale;
    console.log(event.title, votes, winner, open, client.remainingMs(event));
  });
  off();
  client.on("remove", (eventId: string) => console.log(eventId));
  client.on("balance", (balance: number | null) => console.log(balance));
  client.on("notice", (notice: SystemNoticePayload) => console.log(notice.code, notice.retryAfterMs));
  client.on("status", (status: ConnectionStatus) => {
    if (status.state === "closed" && status.error) console.log(status.error.code, status.closeCode);
  });
  const unsubscribe: () => void = client.store.subscribe(() => {
    const snapshot: Snapshot = client.store.getSnapshot();
    console.log(snapshot.stale, snapshot.events.length, snapshot.balance, snapshot.channels["streamer:x"]);
  });
  unsubscribe();
  // The store topic and Svelte's store contract: listeners get the snapshot.
  const offStore: () => void = client.on("store", (snapshot: Snapshot) => console.log(snapshot.status.state));
  offStore();
  client.store.subscribe((snapshot: Snapshot) => console.log(snapshot.events.length))();
  // @ts-expect-error: a store listener gets a snapshot, not an event
  client.on("store", (event: EventState) => console.log(event.title));
  client.subscribe("game:0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e");
  client.unsubscribe(["game:0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"]);
  try {
    const result: VoteResult = await client.vote("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01", "yes", 2, { idempotencyKey: "k" });
    console.log(result.balance, result.totals.yes);
  } catch (error) {
    if (error instanceof LivevoteError && error.code === "INSUFFICIENT_BALANCE") console.log(error.status);
  }
  try {
    await client.vote("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01", "yes", 1, { timeoutMs: 5_000, signal: new AbortController().signal });
  } catch (error) {
    if (error instanceof LivevoteError && (error.code === "VOTE_TIMEOUT" || error.code === "ABORTED")) {
      const key: string | undefined = error.idempotencyKey;
      await client.vote("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01", "yes", 1, { idempotencyKey: key });
    }
  }
  // @ts-expect-error: timeoutMs is a number of milliseconds
  await client.vote("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01", "yes", 1, { timeoutMs: "5s" });
  const first: EventState | undefined = client.event("3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01");
  console.log(first?.closesAt, client.events().length, client.balance(), client.status().state, client.serverNow());
  await client.ready();
  client.close();
  client.reconnect();

  const other = await connectWithUrl({
    url: "http://127.0.0.1:8080",
    token: "t",
    debug: true,
    reconnect: { minDelayMs: 250, maxDelayMs: 10_000, jitter: 0.5 },
  });
  other.close();
  // @ts-expect-error: jitter is a share from 0 to 1
  await connect({ url: "http://127.0.0.1:8080", token: "t", reconnect: { jitter: "full" } });

  // @ts-expect-error: unknown topic
  client.on("nope", () => {});
  // @ts-expect-error: snapshots are read-only
  client.store.getSnapshot().stale = true;
  // @ts-expect-error: url is required
  await connect({ token: "t" });
}

function describe(message: ServerMessage): string {
  switch (message.type) {
    case "EVENT_CREATED":
      return message.payload.event.title;
    case "EVENT_UPDATED":
      return String(message.payload.seq);
    case "EVENT_CLOSED":
      return message.payload.result.optionId;
    case "BALANCE_UPDATED":
      return String(message.payload.balance);
    case "SYSTEM_NOTICE":
      return message.payload.code;
    case "PING":
      return message.payload.ts;
    case "SUBSCRIBED":
    case "UNSUBSCRIBED":
      return message.payload.channels.join(",");
  }
}

const command: ClientCommand = { action: "refresh", token: "t" };
const view: EventView | null = null;
const body: ErrorBody = { error: { code: "NOT_FOUND", message: "no" } };
console.log(main, describe, command, view, body);
