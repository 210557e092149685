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

// ----- Wire payloads (contract §5, seed document) -----

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

// ----- HTTP bodies (contract §4) -----

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

/** Codes the client itself uses, and the server's HTTP error codes (contract §4). */
export type ErrorCode =
  | "INVALID_OPTIONS"
  | "CLIENT_CLOSED"
  | "NETWORK_ERROR"
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
  /** The underlying error (a network failure). */
  readonly cause?: unknown;
  constructor(code: ErrorCode, message: string, details?: { status?: number; closeCode?: number; cause?: unknown });
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
}

export interface Store {
  /** Calls `listener` after every change; returns the function that stops it. */
  subscribe(listener: () => void): () => void;
  getSnapshot(): Snapshot;
}

export interface VoteOptions {
  /** Makes a retried vote count once. A random key is used when none is given. */
  readonly idempotencyKey?: string;
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
  /** Disconnects for good; leaves no timer, socket or page listener behind. */
  close(): void;
}

/** Initialises the wasm (once) and connects; resolves as soon as the client exists. */
export declare function connect(options: ConnectOptions): Promise<LivevoteClient>;
