-- Messages for the hub, waiting for the broker's PUBACK (edge to hub sync). A message is fixed
-- when it is queued: its stream and seq never change, so the hub can drop one it already has.
-- Flow batches name their rows of traffic_features instead of copying them. Ids are never
-- reused (AUTOINCREMENT): the sender keeps its place by id, and the outbox empties often.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    created_us  INTEGER NOT NULL,
    payload     BLOB,               -- the JSON message; NULL for flows
    first_row   INTEGER,            -- flows: traffic_features ids first_row..=last_row
    last_row    INTEGER,
    UNIQUE (stream, seq)
);

-- The last seq given out per stream, so a restart continues after it.
CREATE TABLE sync_seq (
    stream  TEXT    PRIMARY KEY,
    last    INTEGER NOT NULL
);
