// livevote/vue: composables that return refs of a client's snapshot. Inside a component the
// connection starts when it is mounted (never during server rendering) and closes when the
// component's scope ends; provideLivevote/injectLivevote share one connection with descendants.
import { computed, getCurrentInstance, getCurrentScope, inject, onMounted, onScopeDispose, provide, shallowRef } from "vue";
import { sharedConnection } from "./share.js";

const KEY = Symbol("livevote");

/**
 * `useLivevote({ url, streamerId, getToken })` (or an existing client, which stays yours to
 * close): `{ client, snapshot, status, events, balance, event(id), stop() }`, all refs.
 */
export function useLivevote(source) {
  const connection = sharedConnection(source);
  const snapshot = shallowRef(connection.getSnapshot());
  const client = shallowRef(connection.client());
  const unsubscribe = connection.subscribe((next) => {
    snapshot.value = next;
    client.value = connection.client();
  });
  let held = false;
  const start = () => {
    if (!held) connection.hold();
    held = true;
  };
  const stop = () => {
    unsubscribe();
    if (held) connection.release();
    held = false;
  };
  // Outside a component (a store module, a test) there is no mount to wait for.
  if (getCurrentInstance()) onMounted(start);
  else start();
  if (getCurrentScope()) onScopeDispose(stop);
  const events = computed(() => snapshot.value.events);
  return {
    client,
    snapshot,
    status: computed(() => snapshot.value.status),
    events,
    balance: computed(() => snapshot.value.balance),
    /** A ref of one event by id (undefined until it arrives). */
    event: (id) => computed(() => events.value.find((event) => event.id === (typeof id === "function" ? id() : id))),
    stop,
  };
}

/** useLivevote() made available to every descendant through injectLivevote(). */
export function provideLivevote(source) {
  const livevote = useLivevote(source);
  provide(KEY, livevote);
  return livevote;
}

/** What the nearest provideLivevote() above this component returned. */
export function injectLivevote() {
  const livevote = inject(KEY, null);
  if (!livevote) throw new Error("livevote/vue: injectLivevote() needs provideLivevote() in a parent component");
  return livevote;
}
