-- Evidence an episode took from the ring in memory is kept as pcap files, one row per part of
-- at most 128 KiB (one link type each), not one row per packet: writing 134,000 evidence
-- packets a row each was a quarter of the CPU of `analyze --models --db` on the bench capture.
-- Ring packets the store already held are still marked in `packets` (anomaly_id).
CREATE TABLE evidence (
    id          INTEGER PRIMARY KEY,
    anomaly_id  INTEGER NOT NULL,
    first_us    INTEGER NOT NULL,
    last_us     INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    pcap        BLOB    NOT NULL
);
CREATE INDEX evidence_anomaly ON evidence (anomaly_id);
CREATE INDEX evidence_last ON evidence (last_us);
