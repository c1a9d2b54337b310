-- The outbox. seq is AUTOINCREMENT so a deleted number is never handed out again.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    type       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- One row per sink: everything up to acked_seq was delivered (or dead-lettered).
CREATE TABLE cursors (
    sink      TEXT    PRIMARY KEY,
    acked_seq INTEGER NOT NULL
);

-- Durable rule state (counter baselines, machine state), committed with the events it produced.
CREATE TABLE rule_state (
    rule  TEXT PRIMARY KEY,
    state TEXT NOT NULL
);

-- Deliveries a sink refused for good, with the response, kept for inspection and requeue.
CREATE TABLE dead_letters (
    sink      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    id        TEXT    NOT NULL,
    type      TEXT    NOT NULL,
    payload   TEXT    NOT NULL,
    reason    TEXT    NOT NULL,
    failed_at INTEGER NOT NULL,
    PRIMARY KEY (sink, seq)
);
