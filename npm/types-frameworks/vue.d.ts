/**
 * Types of `livevote/vue`: composables returning refs of a client's snapshot; inside a
 * component the connection starts when it is mounted and closes with its scope.
 */
import type { ComputedRef, ShallowRef } from "vue";
import type { ConnectOptions, ConnectionStatus, EventState, LivevoteClient, Snapshot, Uuid } from "livevote";

export interface Livevote {
  /** null until connected (and on the server). */
  readonly client: Readonly<ShallowRef<LivevoteClient | null>>;
  readonly snapshot: Readonly<ShallowRef<Snapshot>>;
  readonly status: ComputedRef<ConnectionStatus>;
  readonly events: ComputedRef<readonly EventState[]>;
  readonly balance: ComputedRef<number | null>;
  /** One event by id (or a getter of the id), undefined until it arrives. */
  event(id: Uuid | (() => Uuid)): ComputedRef<EventState | undefined>;
  /** Stops listening and lets the connection close (done for you when the component's scope ends). */
  stop(): void;
}

/** Connects with these options (or shares an existing client, which you close). */
export declare function useLivevote(source: ConnectOptions | LivevoteClient): Livevote;
/** useLivevote(), made available to descendants through injectLivevote(). */
export declare function provideLivevote(source: ConnectOptions | LivevoteClient): Livevote;
export declare function injectLivevote(): Livevote;
