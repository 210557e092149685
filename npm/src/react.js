// livevote/react: a provider that owns one connection for the components below it, and hooks
// that read its snapshot through useSyncExternalStore. The server (and hydration) render the
// "connecting" snapshot and never connect: the connection starts in an effect, which only a
// browser runs, and StrictMode's mount/unmount/mount keeps that one connection.
import { createContext, createElement, useContext, useEffect, useState, useSyncExternalStore } from "react";
import { CONNECTING, sharedConnection } from "./share.js";

const Context = createContext(null);

/**
 * `<LivevoteProvider options={{ url, streamerId, getToken }}>` connects once mounted (the
 * options are read then: give the provider a new `key` to connect with other ones), or
 * `<LivevoteProvider client={client}>` shares a client you made (and close yourself).
 */
export function LivevoteProvider({ options, client, children }) {
  const [connection] = useState(() => sharedConnection(client || options));
  useEffect(() => {
    connection.hold();
    return connection.release;
  }, [connection]);
  return createElement(Context.Provider, { value: connection }, children);
}

const serverSnapshot = () => CONNECTING;

/** `{ client, snapshot }`: the client once it exists (null before), and its current snapshot. */
export function useLivevote() {
  const connection = useContext(Context);
  if (!connection) throw new Error("livevote/react: useLivevote() needs a <LivevoteProvider> above it");
  const snapshot = useSyncExternalStore(connection.subscribe, connection.getSnapshot, serverSnapshot);
  return { client: connection.client(), snapshot };
}

/** The events in the order they arrived (open ones and recent results). */
export const useEvents = () => useLivevote().snapshot.events;
/** One event by id, or undefined. */
export const useEvent = (id) => useEvents().find((event) => event.id === id);
/** The viewer's balance, null until known. */
export const useBalance = () => useLivevote().snapshot.balance;
/** The connection's status; `state` is "connecting" on the server and until the first socket is up. */
export const useStatus = () => useLivevote().snapshot.status;
