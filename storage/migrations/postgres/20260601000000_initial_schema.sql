-- livevote's schema on PostgreSQL: the same tables and rules as the SQLite schema
-- (migrations/sqlite), so that both stores read and write the same way.
--
-- Instants are Unix nanoseconds in bigint columns, as in SQLite, so that records read back equal
-- the ones written (timestamptz keeps only microseconds).

CREATE TABLE events (
    id          uuid PRIMARY KEY,
    streamer_id uuid NOT NULL,
    -- serde_json of the protocol Event, so that the API echoes it exactly (promptVersions included).
    body        text NOT NULL,
    closes_at   bigint NOT NULL,
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    -- JSON object option id → votes; equals the sum of the event's vote_debit entries.
    totals      text NOT NULL,
    seq         bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    -- JSON of the protocol EventResult, set exactly once, when the event closes.
    result      text,
    closed_at   bigint,
    created_at  bigint NOT NULL,
    CHECK ((status = 'open') = (closed_at IS NULL AND result IS NULL))
) WITH (fillfactor = 50); -- room on the page for HOT updates of a hot event's totals

CREATE INDEX events_by_streamer ON events (streamer_id, closes_at);
CREATE INDEX events_by_closes_at ON events (closes_at);
CREATE INDEX events_open_by_closes_at ON events (closes_at) WHERE status = 'open';
CREATE INDEX events_closed_by_closed_at ON events (closed_at) WHERE status = 'closed';

-- Every user known to the ledger. The balance lives on the user's latest ledger entry.
CREATE TABLE users (
    user_id    uuid PRIMARY KEY,
    created_at bigint NOT NULL
);

-- Append-only: the triggers below refuse UPDATE, DELETE and TRUNCATE, whoever connects. A vote
-- is recorded here and nowhere else: its debit entry names the event, the option and the number
-- of votes. No index by event, as in SQLite: summing an event's votes is an audit.
--
-- Ids are assigned by the writer that holds the write lock (writer_lock below), so one user's
-- entries get growing ids in commit order across every node.
CREATE TABLE ledger (
    id         bigint PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (user_id),
    amount     bigint NOT NULL,
    -- The user's balance after this entry: the sum of the user's amounts up to and including it.
    balance    bigint NOT NULL CHECK (balance >= 0),
    kind       text NOT NULL CHECK (kind IN ('initial_credit', 'vote_debit', 'admin_credit')),
    event_id   uuid REFERENCES events (id),
    option_id  text,
    votes      bigint CHECK (votes >= 1),
    reason     text,
    created_at bigint NOT NULL,
    CHECK (CASE kind WHEN 'vote_debit' THEN amount < 0 WHEN 'admin_credit' THEN amount > 0 ELSE amount >= 0 END),
    CHECK ((kind = 'vote_debit') = (event_id IS NOT NULL AND option_id IS NOT NULL AND votes IS NOT NULL))
);

-- Covers "the user's entries in order" and "the user's current balance" (its last entry).
CREATE INDEX ledger_by_user ON ledger (user_id, id) INCLUDE (balance);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only' USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER ledger_refuses_update_and_delete BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

CREATE TRIGGER ledger_refuses_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- Roles other than the owner (for example a read-only reporting role) get no way around it.
REVOKE UPDATE, DELETE, TRUNCATE ON ledger FROM PUBLIC;

-- The first answer of every request that succeeded with an Idempotency-Key, scoped to the user
-- who voted (or the admin who credited). Rows older than 25 hours are purged now and then by
-- whichever node gets the purge's advisory lock.
CREATE TABLE idempotency_keys (
    scope       uuid NOT NULL,
    key         text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('vote', 'credit')),
    -- SHA-256 of the caller's request fingerprint, so that a row's size does not depend on it.
    fingerprint bytea NOT NULL CHECK (length(fingerprint) = 32),
    response    text NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- One row whose lock is the database's write lock: every node's writer takes it (an UPDATE of
-- `generation`) first in each batch, so writes of all nodes are serialised like SQLite's
-- BEGIN IMMEDIATE, and a writer that finds `generation` moved on by someone else since its own
-- last batch drops its cache (the role of SQLite's PRAGMA data_version). A row lock rather than
-- an advisory lock: it ends with the transaction and works through connection poolers.
CREATE TABLE writer_lock (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    generation bigint NOT NULL
);

INSERT INTO writer_lock (generation) VALUES (0);
