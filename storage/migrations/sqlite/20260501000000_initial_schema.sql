-- livevote's embedded schema.
--
-- Instants are Unix nanoseconds in INTEGER columns so that they compare and sort as numbers and
-- come back exactly as they were written; uuids are 16-byte BLOBs (sqlx's encoding).

CREATE TABLE events (
    id          BLOB PRIMARY KEY NOT NULL,
    streamer_id BLOB NOT NULL,
    -- serde_json of the protocol Event, so that the API echoes it exactly (promptVersions included).
    body        TEXT NOT NULL,
    closes_at   INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    -- JSON object option id → votes; equals the sum of the event's rows in `votes`.
    totals      TEXT NOT NULL,
    seq         INTEGER NOT NULL DEFAULT 0 CHECK (seq >= 0),
    -- JSON of the protocol EventResult, set exactly once, when the event closes.
    result      TEXT,
    closed_at   INTEGER,
    created_at  INTEGER NOT NULL,
    CHECK ((status = 'open') = (closed_at IS NULL AND result IS NULL))
);

CREATE INDEX events_by_streamer ON events (streamer_id, closes_at);
CREATE INDEX events_by_closes_at ON events (closes_at);
-- Serves both "every open event" and "closed since", the two halves of live_events.
CREATE INDEX events_by_status ON events (status, closed_at);

-- Every user known to the ledger. A user's balance is not stored here but on the user's latest
-- ledger entry (see `ledger.balance`), so that a vote writes no row at a random place beyond the
-- ones the ledger and its index need anyway.
CREATE TABLE users (
    user_id    BLOB PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Append-only: the triggers below refuse every UPDATE and DELETE. A vote is recorded here and
-- nowhere else: its debit entry names the event, the option and the number of votes, so an
-- event's totals equal the sum of `votes` over its vote_debit entries.
--
-- There is deliberately no index by event: every index is another B-tree write per vote on the
-- hottest path, and summing an event's votes is an audit, not something a request does.
CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (user_id),
    amount     INTEGER NOT NULL,
    -- The user's balance after this entry: the sum of the user's amounts up to and including it.
    balance    INTEGER NOT NULL CHECK (balance >= 0),
    kind       TEXT NOT NULL CHECK (kind IN ('initial_credit', 'vote_debit', 'admin_credit')),
    event_id   BLOB REFERENCES events (id),
    option_id  TEXT,
    votes      INTEGER CHECK (votes >= 1),
    reason     TEXT,
    created_at INTEGER NOT NULL,
    CHECK (CASE kind WHEN 'vote_debit' THEN amount < 0 WHEN 'admin_credit' THEN amount > 0 ELSE amount >= 0 END),
    CHECK ((kind = 'vote_debit') = (event_id IS NOT NULL AND option_id IS NOT NULL AND votes IS NOT NULL))
);

-- Covers "the user's entries in order" and "the user's current balance" (its last entry).
CREATE INDEX ledger_by_user ON ledger (user_id, id, balance);

CREATE TRIGGER ledger_refuses_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;

CREATE TRIGGER ledger_refuses_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;

-- The first answer of every request that succeeded with an Idempotency-Key, scoped to the user
-- who voted (or the admin who credited). Rows older than a day are purged now and then.
--
-- Rows go in arrival order; only the small unique index on (scope, key) takes an entry at a
-- random place, which keeps the pages a busy commit rewrites few and the index cache-resident.
-- Arrival order is also age order, so the purge deletes from the lowest id up and needs no index
-- on created_at.
CREATE TABLE idempotency_keys (
    id          INTEGER PRIMARY KEY,
    scope       BLOB NOT NULL,
    key         TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('vote', 'credit')),
    -- SHA-256 of the caller's request fingerprint, so that a row's size does not depend on it.
    fingerprint BLOB NOT NULL,
    response    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE UNIQUE INDEX idempotency_keys_by_key ON idempotency_keys (scope, key);
