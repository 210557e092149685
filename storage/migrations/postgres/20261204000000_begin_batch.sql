-- One round trip that takes the write lock and reads what a batch needs, so that the lock is held
-- for the batch's write and COMMIT only. Before it, a writer took the lock and then read the next
-- ledger id, the users, the events and the keys one statement each, every one a round trip to a
-- node that shares its cores with the others: with three nodes taking turns, the lock holder was
-- seen idle in transaction, waiting for its node, 38% of the time.
--
-- VOLATILE (the default): each statement below takes a new snapshot, so the reads after the
-- UPDATE see everything the previous holder of the lock committed while this one waited for it.
-- The old way (UPDATE writer_lock first, reads after) still works beside it: nodes of two versions
-- take the same lock during a rolling upgrade.
--
-- The rows come back tagged by `what`:
--   'generation'  number = writer_lock.generation after this batch's increment (always first);
--   'next_entry'  number = the id the next ledger entry gets (when asked for, or after another
--                 writer committed, since the caller's cache is then dropped);
--   'user'        id = user, number = balance;
--   'event'       the events row's columns;
--   'key'         id = scope, key, kind, fingerprint, response.
-- When the generation is not the one the caller expects (another node wrote since its last
-- batch), every user and event of the batch is read, not only those its cache lacks.
CREATE FUNCTION livevote_begin_batch(
    expected_generation bigint,
    want_next_entry boolean,
    missing_users uuid[],
    all_users uuid[],
    missing_events uuid[],
    all_events uuid[],
    key_scopes uuid[],
    key_names text[]
) RETURNS TABLE (
    what        text,
    id          uuid,
    number      bigint,
    key         text,
    kind        text,
    fingerprint bytea,
    response    text,
    body        text,
    closes_at   bigint,
    status      text,
    totals      text,
    seq         bigint,
    result      text,
    closed_at   bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    taken bigint;
    cache_is_current boolean;
BEGIN
    UPDATE writer_lock SET generation = writer_lock.generation + 1
        RETURNING writer_lock.generation INTO taken;
    cache_is_current := expected_generation IS NOT NULL AND taken = expected_generation;
    RETURN QUERY SELECT 'generation'::text, NULL::uuid, taken, NULL::text, NULL::text,
        NULL::bytea, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::bigint,
        NULL::text, NULL::bigint;
    IF want_next_entry OR NOT cache_is_current THEN
        RETURN QUERY SELECT 'next_entry'::text, NULL::uuid,
            (SELECT coalesce(max(ledger.id), 0) + 1 FROM ledger), NULL::text, NULL::text,
            NULL::bytea, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::text,
            NULL::bigint, NULL::text, NULL::bigint;
    END IF;
    -- A known user always has an entry (the initial credit, written with the user's row), and
    -- the latest one holds the balance: one backward probe of `ledger_by_user` per user. The
    -- LIMIT keeps the planner from turning the probes into a join, which it costs below hundreds
    -- of probes while the tables are young and which then reads every user under the lock.
    RETURN QUERY SELECT 'user'::text, wanted.user_id, latest.balance, NULL::text, NULL::text,
        NULL::bytea, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::bigint,
        NULL::text, NULL::bigint
        FROM UNNEST(CASE WHEN cache_is_current THEN missing_users ELSE all_users END)
            AS wanted (user_id)
        CROSS JOIN LATERAL (SELECT ledger.balance FROM ledger
            WHERE ledger.user_id = wanted.user_id ORDER BY ledger.id DESC LIMIT 1) AS latest;
    RETURN QUERY SELECT 'event'::text, events.id, NULL::bigint, NULL::text, NULL::text,
        NULL::bytea, NULL::text, events.body, events.closes_at, events.status, events.totals,
        events.seq, events.result, events.closed_at
        FROM events
        WHERE events.id = ANY (CASE WHEN cache_is_current THEN missing_events ELSE all_events END);
    -- One primary-key probe per key, for the same reason as the users above.
    RETURN QUERY SELECT 'key'::text, wanted.scope, NULL::bigint, wanted.key, stored.kind,
        stored.fingerprint, stored.response, NULL::text, NULL::bigint, NULL::text, NULL::text,
        NULL::bigint, NULL::text, NULL::bigint
        FROM UNNEST(key_scopes, key_names) AS wanted (scope, key)
        CROSS JOIN LATERAL (SELECT idempotency_keys.kind, idempotency_keys.fingerprint,
            idempotency_keys.response FROM idempotency_keys
            WHERE idempotency_keys.scope = wanted.scope AND idempotency_keys.key = wanted.key
            LIMIT 1) AS stored;
END;
$$;
