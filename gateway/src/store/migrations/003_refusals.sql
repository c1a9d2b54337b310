-- Events a sink dead-lettered in a row with none delivered since: the sink holds further
-- refusals past a threshold (a receiver refusing everything), across restarts too.
ALTER TABLE cursors ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
