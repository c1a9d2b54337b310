-- Delivery protection and the audit trail (issue 11).
-- Each sink's circuit breaker as last changed: `causeway buffer stats` shows it.
CREATE TABLE sink_health (
    sink     TEXT    PRIMARY KEY,
    breaker  TEXT    NOT NULL,   -- closed, open, half-open
    since    INTEGER NOT NULL,   -- ms since the epoch
    failures INTEGER NOT NULL,   -- failed deliveries in a row
    reason   TEXT    NOT NULL    -- the last failure, or ''
);

-- Every delivery attempt, kept for `[buffer] audit_retention`: `causeway audit`.
CREATE TABLE audit (
    sink        TEXT    NOT NULL,
    at          INTEGER NOT NULL,   -- ms since the epoch, when the request began
    duration_ms INTEGER NOT NULL,
    first_seq   INTEGER NOT NULL,   -- the request's events: buffer sequence numbers ...
    last_seq    INTEGER NOT NULL,
    first_id    TEXT    NOT NULL,   -- ... and ids
    last_id     TEXT    NOT NULL,
    events      INTEGER NOT NULL,
    target      TEXT    NOT NULL,   -- URL (no query), broker and topic, file
    outcome     TEXT    NOT NULL,   -- delivered, partial, retry, rejected, too_large
    status      TEXT    NOT NULL,   -- e.g. `HTTP 202`, or ''
    response    TEXT    NOT NULL    -- an excerpt of the answer or the error
);
CREATE INDEX audit_by_sink ON audit (sink, at);
CREATE INDEX audit_by_age ON audit (at);
CREATE INDEX audit_by_seq ON audit (last_seq);

-- Which sequence number each delivered event had, kept as long as the audit rows that name it
-- (the event's own row leaves the buffer once every sink has it): `causeway audit --id`.
CREATE TABLE event_ids (
    seq        INTEGER NOT NULL,
    id         TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    sink       TEXT,              -- a requeued row's one sink, else NULL
    removed_at INTEGER NOT NULL,
    PRIMARY KEY (seq)
);
CREATE INDEX event_ids_by_id ON event_ids (id);
CREATE INDEX event_ids_by_age ON event_ids (removed_at);
