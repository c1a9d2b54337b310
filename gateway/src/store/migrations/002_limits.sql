-- Limits, lanes and requeue (issue 6).
-- The events table is rebuilt: `id` is no longer UNIQUE (a requeued dead letter is stored again
-- under its own id, for one sink only), and each row carries its payload size, its eviction
-- lane and, for a requeued row, the one sink it is for.
CREATE TABLE events_v2 (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    size       INTEGER NOT NULL,   -- payload bytes, what max_bytes counts
    lane       INTEGER NOT NULL,   -- 0 telemetry (evicted first), 1 production, 2 orders, quality, gateway
    sink       TEXT                -- NULL: every sink whose routes match; else this sink alone
);
INSERT INTO events_v2 (seq, id, type, payload, created_at, size, lane, sink)
    SELECT seq, id, type, payload, created_at, LENGTH(CAST(payload AS BLOB)),
           CASE WHEN type GLOB 'telemetry.*' THEN 0
                WHEN type GLOB 'quality.*' OR type = 'production.order' OR type GLOB 'gateway.*' THEN 2
                ELSE 1 END,
           NULL
    FROM events;
-- Keep the sequence: a number handed out before must never be handed out again, or a cursor
-- would skip the new event that gets it.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'events_v2', COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events_v2');
UPDATE sqlite_sequence
    SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))
    WHERE name = 'events_v2';
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
CREATE INDEX events_by_lane ON events (lane, seq);
-- One row per event for every sink; a requeued row (for one sink) may repeat an id.
CREATE UNIQUE INDEX events_id_unique ON events (id) WHERE sink IS NULL;
CREATE INDEX events_by_age ON events (created_at);
-- Requeued rows, found per sink when that sink's cursor passes them.
CREATE INDEX events_by_sink ON events (sink, seq) WHERE sink IS NOT NULL;

ALTER TABLE dead_letters ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE dead_letters SET size = LENGTH(CAST(payload AS BLOB));
CREATE INDEX dead_letters_by_age ON dead_letters (failed_at);

-- Every event the buffer dropped, by type and reason, kept for `causeway buffer stats`.
CREATE TABLE drops (
    type   TEXT    NOT NULL,
    reason TEXT    NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (type, reason)
);
