/**
 * Types of the `livevote` package: every payload the server sends, the state the client
 * merges from them, and the client API. Hand-written; checked by compiling a consumer file
 * with `tsc --noEmit --strict` (tests/packaging).
 */

/** A uuid in its canonical text form, e.g. `"3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01"`. */
export type Uuid = string;
/** An ISO-8601 instant, e.g. `"2026-11-26T12:00:00.000Z"`. */
export type Timestamp = string;
/** Votes per option id. */
export type Totals = Readonly<Record<string, number>>;
/** `streamer:<uuid>`, `game:<uuid>` or `user:<uuid>`. */
export type ChannelName = `streamer:${string}` | `game:${string}` | `user:${string}`;

// ----- Wire payloads (docs/contract.md §5) -----

export interface EventOption {
  readonly id: string;
  readonly label: string;
}

/** An event as the worker created it (`EVENT_CREATED`'s `payload.event`). */
export interface LiveEvent {
  readonly id: Uuid;
  readonly streamerId: Uuid;
  readonly gameId: Uuid | null;
  readonly title: string;
  readonly options: readonly EventOption[];
  readonly closesAt: Timestamp;
  readonly costPerVote: number;
  readonly promptVersions?: Readonly<Record<string, string>>;
}

export interface EventResult {
  readonly optionId: string;
  readonly totals: Totals;
}

export interface EventCreatedPayload {
  readonly event: LiveEvent;
}
export interface EventUpdatedPayload {
  readonly eventId: Uuid;
  readonly totals: Totals;
  readonly closesAt: Timestamp | null;
  readonly seq: number;
}
export interface EventClosedPayload {
  readonly eventId: Uuid;
  readonly result: EventResult;
}
export interface BalanceUpdatedPayload {
  readonly balance: number;
  readonly userId?: Uuid;
}
/** Notice codes the server itself uses; `/api/notices` may send any other string. */
export type NoticeCode =
  | "SUBSCRIBE_DENIED"
  | "BAD_REQUEST"
  | "RATE_LIMITED"
  | "TOKEN_EXPIRING"
  | "TOKEN_REFRESHED"
  | "REFRESH_DENIED"
  | "SERVER_RESTARTING"
  | "MAINTENANCE"
  | "UNAUTHORIZED"
  | "TOKEN_EXPIRED"
  | "FORBIDDEN"
  | (string & {});
export interface SystemNoticePayload {
  readonly code: NoticeCode;
  readonly message: string;
  /** The channel the notice is about (SUBSCRIBE_DENIED) or was sent to. */
  readonly channel?: string;
  /** With SERVER_RESTARTING: how long to wait before reconnecting. */
  readonly retryAfterMs?: number;
}
export interface PingPayload {
  readonly ts: Timestamp;
}
export interface ChannelListPayload {
  readonly channels: readonly string[];
}

/** Every message the server sends; a frame holds one or an array of them. */
export type ServerMessage =
  | { readonly type: "EVENT_CREATED"; readonly payload: EventCreatedPayload }
  | { readonly type: "EVENT_UPDATED"; readonly payload: EventUpdatedPayload }
  | { readonly type: "EVENT_CLOSED"; readonly payload: EventClosedPayload }
  | { readonly type: "BALANCE_UPDATED"; readonly payload: BalanceUpdatedPayload }
  | { readonly type: "SYSTEM_NOTICE"; readonly payload: SystemNoticePayload }
  | { readonly type: "PING"; readonly payload: PingPayload }
  | { readonly type: "SUBSCRIBED"; readonly payload: ChannelListPayload }
  | { readonly type: "UNSUBSCRIBED"; readonly payload: ChannelListPayload };

/** Every command the client sends. */
export type ClientCommand =
  | { readonly action: "subscribe"; readonly channels: readonly string[] }
  | { readonly action: "unsubscribe"; readonly channels: readonly string[] }
  | { readonly action: "pong" }
  | { readonly action: "refresh"; readonly token: string };

// ----- HTTP bodies (docs/contract.md §4) -----

export interface EventView {
  readonly event: LiveEvent;
  readonly status: "open" | "closed";
  readonly totals: Totals;
  readonly result: EventResult | null;
}
export interface VoteRequest {
  readonly optionId: string;
  readonly votes?: number;
}
/** What `vote()` resolves with. */
export interface VoteResult {
  readonly balance: number;
  readonly totals: Totals;
}
export interface ErrorBody {
  readonly error: { readonly code: string; readonly message: string };
}

// ----- Merged state -----

/**
 * One event as a page should show it: the definition flattened with its live totals.
 * Frozen; a changed event is a new object, an unchanged one keeps its identity.
 */
export interface EventState extends LiveEvent {
  /** The current closing time (EVENT_UPDATED may move it). */
  readonly closesAt: Timestamp;
  readonly status: "open" | "closed";
  /** Every option of the event, zero until voted for; the final totals once closed. */
  readonly totals: Totals;
  /** `seq` of the last update applied; 0 before the first. */
  readonly seq: number;
  readonly result: EventResult | null;
  /** True while the connection that fed this state is gone and not yet confirmed by a new one. */
  readonly stale: boolean;
}

export type ConnectionState = "connecting" | "live" | "reconnecting" | "closed";

export interface ConnectionStatus {
  /**
   * `connecting`: a socket is opening or waiting for its channels' snapshots; `live`: every
   * channel answered, the state is current; `reconnecting`: waiting before the next attempt
   * (or for a new token); `closed`: stopped for good, see `error`.
   */
  readonly state: ConnectionState;
  /** Failed attempts since the last socket that stayed up (drives the backoff). */
  readonly attempt: number;
  /** While reconnecting: when the next attempt starts (ms since the epoch). */
  readonly retryAt: number | null;
  /** The close code of the last socket, if one closed. */
  readonly closeCode: number | null;
  /** Why the client stopped, when the server made it stop (4001, 4003, 4002 without getToken). */
  readonly error: LivevoteError | null;
}

export type ChannelState = "pending" | "subscribed" | "denied";

/** The store's immutable snapshot: the same object until something changes. */
export interface Snapshot {
  readonly status: ConnectionStatus;
  /** True after a lost connection until a new one delivered a fresh snapshot. */
  readonly stale: boolean;
  /** Events in the order they first arrived (open ones and up to 100 recently closed). */
  readonly events: readonly EventState[];
  readonly balance: number | null;
  readonly channels: Readonly<Record<string, ChannelState>>;
}

// ----- Errors -----

/** Codes the client itself uses, and the server's HTTP error codes (docs/contract.md §4). */
export type ErrorCode =
  | "INVALID_OPTIONS"
  | "CLIENT_CLOSED"
  | "NETWORK_ERROR"
  | "VOTE_TIMEOUT"
  | "ABORTED"
  | "BAD_RESPONSE"
  | "UNAUTHORIZED"
  | "INVALID_TOKEN"
  | "TOKEN_EXPIRED"
  | "FORBIDDEN"
  | "NOT_FOUND"
  | "EVENT_CLOSED"
  | "UNKNOWN_OPTION"
  | "INVALID_VOTES"
  | "INSUFFICIENT_BALANCE"
  | "RATE_LIMITED"
  | "IDEMPOTENCY_KEY_REUSED"
  | "INVALID_IDEMPOTENCY_KEY"
  | "BAD_REQUEST"
  | "VALIDATION_FAILED"
  | "PAYLOAD_TOO_LARGE"
  | "UNAVAILABLE"
  | "INTERNAL"
  | (string & {});

/** Every rejection and every stop carries one. */
export declare class LivevoteError extends Error {
  readonly name: "LivevoteError";
  readonly code: ErrorCode;
  /** The HTTP status, for errors answered by the server. */
  readonly status?: number;
  /** The socket close code, for a stop decided by the server. */
  readonly closeCode?: number;
  /** The underlying error (a network failure, the abort signal's reason). */
  readonly cause?: unknown;
  /**
   * On a vote that may or may not have counted (`VOTE_TIMEOUT`, `ABORTED`, `NETWORK_ERROR`): the
   * key it was sent with. Voting again with `{ idempotencyKey }` set to it counts the vote at
   * most once.
   */
  readonly idempotencyKey?: string;
  constructor(code: ErrorCode, message: string, details?: { status?: number; closeCode?: number; cause?: unknown; idempotencyKey?: string });
}

// ----- The client -----

/** A WebSocket constructor: the browser's, Node 22's, or `ws`'s. */
export type WebSocketConstructor = new (url: string) => unknown;

export interface ConnectOptions {
  /** The server's base URL: `https://votes.example.com` (ws(s):// and a trailing `/realtime` work too). */
  readonly url: string;
  /** A token from your backend (`POST /api/auth`). */
  readonly token?: string;
  /** Called for a new token when the server announces expiry (TOKEN_EXPIRING), after 4002 and once after 4001. */
  readonly getToken?: () => string | Promise<string>;
  /** Shorthand for the channel `streamer:<streamerId>`. */
  readonly streamerId?: Uuid;
  readonly channels?: readonly string[];
  /** The WebSocket to use; default the global one (in Node 20, the `ws` package if installed). */
  readonly WebSocket?: WebSocketConstructor;
  /** The server's `--heartbeat-interval` (default 20 000). */
  readonly heartbeatIntervalMs?: number;
  /** The server's `--pong-timeout` (default 10 000). A socket silent for both together is dead. */
  readonly pongTimeoutMs?: number;
  /**
   * How long a `getToken()` answer may take (default 10 000). One that takes longer counts as
   * failed: the client backs off and asks again, instead of waiting for it for ever.
   */
  readonly tokenTimeoutMs?: number;
  /** How long to wait between connection attempts; checked by `connect()` (`INVALID_OPTIONS`). */
  readonly reconnect?: ReconnectOptions;
  /**
   * Logs state changes, close codes, reconnect delays and notices with `console.debug`.
   * Default: on when the page's `localStorage["livevote:debug"]` is `"1"`, `"true"` or `"on"`.
   */
  readonly debug?: boolean;
}

/**
 * The reconnect backoff. Before attempt n (0 for the first retry after a lost connection) the
 * client waits up to min(maxDelayMs, minDelayMs × 2^n), of which the `jitter` share is random.
 * The counter starts over after a connection that stayed up 5 s. 4008 adds 5 s and 1012 the
 * server's `retryAfterMs` on top.
 */
export interface ReconnectOptions {
  /** The first attempt's ceiling, 1–3 600 000 ms (default 500). */
  readonly minDelayMs?: number;
  /** The largest ceiling, from `minDelayMs` to 3 600 000 ms (default 20 000). */
  readonly maxDelayMs?: number;
  /**
   * 0–1: the random share of each wait (default 1, full jitter: anywhere from 0 to the ceiling;
   * 0 waits exactly the ceiling). Randomness keeps many clients dropped together from
   * reconnecting together.
   */
  readonly jitter?: number;
}

export interface ClientEvents {
  /** An event was created, updated, closed, or became stale/fresh. */
  event: (event: EventState) => void;
  /** An event left the state (no channel carries it any more, or the server no longer knows it). */
  remove: (eventId: Uuid) => void;
  balance: (balance: number | null) => void;
  /** Every SYSTEM_NOTICE, including the ones the client acts on itself. */
  notice: (notice: SystemNoticePayload) => void;
  status: (status: ConnectionStatus) => void;
  /** The snapshot changed (anything above, channels, staleness); gets the new snapshot. */
  store: (snapshot: Snapshot) => void;
}

/** A Svelte store too; for React, `useSyncExternalStore(store.subscribe, store.getSnapshot)`. */
export interface Store {
  /**
   * Calls `listener` with the snapshot at once, then after every change; returns the function
   * that stops it.
   */
  subscribe(listener: (snapshot: Snapshot) => void): () => void;
  getSnapshot(): Snapshot;
}

/** What `vote()` needs of an `AbortSignal` (the browser's and Node's both fit). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: "abort", listener: () => void): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

export interface VoteOptions {
  /**
   * Makes a retried vote count once (the server answers a repeat with the first answer). A
   * random key is used when none is given; errors that leave the outcome open carry it as
   * `error.idempotencyKey`.
   */
  readonly idempotencyKey?: string;
  /**
   * How long to wait for the answer (default 10 000; `Infinity` for no limit). Past it the
   * request is cancelled and `vote()` rejects with `VOTE_TIMEOUT`, but the server may have
   * counted the vote already: retry with the same `idempotencyKey`.
   */
  readonly timeoutMs?: number;
  /** Cancels the request; `vote()` then rejects with `ABORTED` (the vote may have counted). */
  readonly signal?: AbortSignalLike;
}

export interface LivevoteClient {
  /** Listens; returns the function that stops listening. */
  on<K extends keyof ClientEvents>(topic: K, listener: ClientEvents[K]): () => void;
  /** For React: `useSyncExternalStore(client.store.subscribe, client.store.getSnapshot)`. */
  readonly store: Store;
  events(): readonly EventState[];
  event(id: Uuid): EventState | undefined;
  balance(): number | null;
  status(): ConnectionStatus;
  channels(): Readonly<Record<string, ChannelState>>;
  subscribe(channels: string | readonly string[]): void;
  unsubscribe(channels: string | readonly string[]): void;
  /** Votes over HTTP; rejects with a `LivevoteError` (`INSUFFICIENT_BALANCE`, `EVENT_CLOSED`, ...). */
  vote(eventId: Uuid, optionId: string, votes?: number, options?: VoteOptions): Promise<VoteResult>;
  /** Milliseconds until the event closes by the server's clock; 0 when closed, NaN when unknown. */
  remainingMs(event: EventState | Uuid): number;
  /** The server's clock now (ms since the epoch), estimated from its PINGs. */
  serverNow(): number;
  /** Resolves once every channel is answered on an open socket; rejects if the client stops. */
  ready(): Promise<void>;
  /** Disconnects; leaves no timer, socket or page listener behind, until `reconnect()`. */
  close(): void;
  /**
   * After `close()` (or a stop by the server): connects again with the same options and
   * resubscribes every channel; the old state stays visible, marked stale, until the new
   * snapshot replaces it. While waiting between attempts: tries now. Otherwise nothing.
   */
  reconnect(): void;
}

/** Initialises the wasm (once) and connects; resolves as soon as the client exists. */
export declare function connect(options: ConnectOptions): Promise<LivevoteClient>;
