/**
 * Types of `livevote/react`: a provider that owns one connection for the components below it,
 * and hooks over `useSyncExternalStore` (the server renders the "connecting" snapshot).
 */
import type { ReactNode } from "react";
import type { ConnectOptions, ConnectionStatus, EventState, LivevoteClient, Snapshot, Uuid } from "livevote";

export type LivevoteProviderProps =
  /** Connects once mounted, with these options (read once: change the provider's `key` to reconnect with others). */
  | { readonly options: ConnectOptions; readonly client?: undefined; readonly children?: ReactNode }
  /** Shares a client you made; you close it. */
  | { readonly client: LivevoteClient; readonly options?: undefined; readonly children?: ReactNode };

export declare function LivevoteProvider(props: LivevoteProviderProps): ReactNode;

/** The client once it exists (null on the server and while connecting), and its snapshot. */
export declare function useLivevote(): { readonly client: LivevoteClient | null; readonly snapshot: Snapshot };
/** The events in the order they arrived (open ones and recent results). */
export declare function useEvents(): readonly EventState[];
/** One event by id, or undefined. */
export declare function useEvent(id: Uuid): EventState | undefined;
/** The viewer's balance, null until known. */
export declare function useBalance(): number | null;
/** `state` is "connecting" on the server and until the first socket is up. */
export declare function useStatus(): ConnectionStatus;
