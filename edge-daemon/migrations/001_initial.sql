-- Tapwatch edge store, version 1. Times are Unix microseconds; addresses are 4 or 16 bytes.

-- Packets kept as evidence: the rolling ring per interface (anomaly_id NULL) and the packets
-- of flows that became anomalies.
CREATE TABLE packets (
    id          INTEGER PRIMARY KEY,
    ts_us       INTEGER NOT NULL,
    interface   TEXT    NOT NULL,
    link_type   INTEGER NOT NULL,  -- libpcap DLT
    wire_len    INTEGER NOT NULL,
    src         BLOB,
    dst         BLOB,
    data        BLOB    NOT NULL,
    anomaly_id  INTEGER
);
CREATE INDEX packets_ring ON packets (interface, id) WHERE anomaly_id IS NULL;
CREATE INDEX packets_anomaly ON packets (anomaly_id) WHERE anomaly_id IS NOT NULL;
CREATE INDEX packets_ts ON packets (ts_us);

-- One row per finished flow with its feature vector (models/features.json order).
CREATE TABLE traffic_features (
    id           INTEGER PRIMARY KEY,
    start_us     INTEGER NOT NULL,
    end_us       INTEGER NOT NULL,
    src_ip       TEXT    NOT NULL,
    src_port     INTEGER NOT NULL,
    dst_ip       TEXT    NOT NULL,
    dst_port     INTEGER NOT NULL,
    protocol     INTEGER NOT NULL,
    vlan         INTEGER NOT NULL,
    end_reason   TEXT    NOT NULL,
    packets      INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    feature_set  INTEGER NOT NULL,
    features     BLOB    NOT NULL   -- little-endian f32, one per feature
);
CREATE INDEX traffic_features_end ON traffic_features (end_us);

-- One row per detection run over a batch of flows.
CREATE TABLE analyses (
    id             INTEGER PRIMARY KEY,
    ts_us          INTEGER NOT NULL,
    model          TEXT    NOT NULL,
    model_version  TEXT    NOT NULL,
    rows           INTEGER NOT NULL,
    score_min      REAL    NOT NULL,
    score_mean     REAL    NOT NULL,
    score_max      REAL    NOT NULL,
    threshold      REAL    NOT NULL,
    flagged        INTEGER NOT NULL,
    latency_us     INTEGER NOT NULL
);
CREATE INDEX analyses_ts ON analyses (ts_us);

-- Anomaly episodes: one per source and kind while it lasts.
CREATE TABLE anomalies (
    id             INTEGER PRIMARY KEY,
    first_seen_us  INTEGER NOT NULL,
    last_seen_us   INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    severity       TEXT    NOT NULL,
    confidence     REAL    NOT NULL,
    score          REAL    NOT NULL,
    threshold      REAL    NOT NULL,
    detector       TEXT    NOT NULL,
    src_ip         TEXT    NOT NULL,
    dst_ip         TEXT,
    dst_port       INTEGER,
    protocol       INTEGER,
    count          INTEGER NOT NULL,
    reasons        TEXT    NOT NULL   -- JSON list of {feature, value, contribution}
);
CREATE INDEX anomalies_last ON anomalies (last_seen_us);

-- Traffic per interval, with the top ports and talkers as JSON.
CREATE TABLE traffic_stats (
    id                 INTEGER PRIMARY KEY,
    interval_start_us  INTEGER NOT NULL,
    interval_end_us    INTEGER NOT NULL,
    packets            INTEGER NOT NULL,
    bytes              INTEGER NOT NULL,
    tcp_packets        INTEGER NOT NULL,
    udp_packets        INTEGER NOT NULL,
    icmp_packets       INTEGER NOT NULL,
    other_packets      INTEGER NOT NULL,
    flows_started      INTEGER NOT NULL,
    flows_ended        INTEGER NOT NULL,
    parse_errors       INTEGER NOT NULL,
    top_ports          TEXT    NOT NULL,
    top_talkers        TEXT    NOT NULL
);
CREATE INDEX traffic_stats_start ON traffic_stats (interval_start_us);
