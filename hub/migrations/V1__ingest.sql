-- Tapwatch hub, version 1: what the edges send, and the ingest's own bookkeeping.
-- Times are timestamptz (UTC). Bulk tables are partitioned by day (retention drops partitions);
-- tapwatch_ensure_partition makes a day's partition when the ingest first needs it.

CREATE TABLE devices (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- From the retained `status` topic: online, offline, or unknown before the first.
    state       text        NOT NULL DEFAULT 'unknown',
    state_seq   bigint      NOT NULL DEFAULT 0,
    version     text,
    uptime_s    bigint,
    last_seen   timestamptz
);

-- One row per message taken: ingest is idempotent on (device, stream, seq).
CREATE TABLE ingest_log (
    device       text        NOT NULL,
    stream       text        NOT NULL,
    seq          bigint      NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    hub          text        NOT NULL,   -- the client id of the hub that took it
    sent_at      timestamptz NOT NULL,   -- the message's ts: received_at - sent_at is the lag
    PRIMARY KEY (device, stream, seq)
);
CREATE INDEX ingest_log_received ON ingest_log (received_at);

-- Messages refused, kept whole for inspection.
CREATE TABLE dead_letters (
    id           bigserial   PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text        NOT NULL,
    reason       text        NOT NULL,
    detail       text        NOT NULL,
    payload      bytea       NOT NULL
);
CREATE INDEX dead_letters_received ON dead_letters (received_at);

-- Finished flows with their feature vectors (models/features.json order, feature_set version).
CREATE TABLE traffic_features (
    device       text        NOT NULL,
    batch_seq    bigint      NOT NULL,
    idx          smallint    NOT NULL,   -- position in the batch
    start_ts     timestamptz NOT NULL,
    end_ts       timestamptz NOT NULL,
    src_ip       inet        NOT NULL,
    src_port     integer     NOT NULL,
    dst_ip       inet        NOT NULL,
    dst_port     integer     NOT NULL,
    protocol     smallint    NOT NULL,
    vlan         integer     NOT NULL,
    end_reason   text        NOT NULL,
    feature_set  integer     NOT NULL,
    features     real[]      NOT NULL
) PARTITION BY RANGE (end_ts);
CREATE INDEX traffic_features_end ON traffic_features (end_ts);
CREATE INDEX traffic_features_device ON traffic_features (device, end_ts);

CREATE TABLE traffic_stats (
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    interval_start  timestamptz NOT NULL,
    interval_end    timestamptz NOT NULL,
    packets         bigint      NOT NULL,
    bytes           bigint      NOT NULL,
    tcp_packets     bigint      NOT NULL,
    udp_packets     bigint      NOT NULL,
    icmp_packets    bigint      NOT NULL,
    other_packets   bigint      NOT NULL,
    flows_started   bigint      NOT NULL,
    flows_ended     bigint      NOT NULL,
    parse_errors    bigint      NOT NULL,
    top_ports       jsonb       NOT NULL,
    top_talkers     jsonb       NOT NULL
) PARTITION BY RANGE (interval_start);
CREATE INDEX traffic_stats_device ON traffic_stats (device, interval_start);

-- Rollups of traffic_stats by the minute and the hour of interval_start (what dashboards read).
CREATE TABLE traffic_stats_1m (
    device         text        NOT NULL,
    bucket         timestamptz NOT NULL,
    packets        bigint      NOT NULL,
    bytes          bigint      NOT NULL,
    tcp_packets    bigint      NOT NULL,
    udp_packets    bigint      NOT NULL,
    icmp_packets   bigint      NOT NULL,
    other_packets  bigint      NOT NULL,
    flows_started  bigint      NOT NULL,
    flows_ended    bigint      NOT NULL,
    PRIMARY KEY (device, bucket)
);
CREATE INDEX traffic_stats_1m_bucket ON traffic_stats_1m (bucket);
CREATE TABLE traffic_stats_1h (LIKE traffic_stats_1m INCLUDING ALL);

CREATE TABLE system_metrics (
    device            text        NOT NULL,
    seq               bigint      NOT NULL,
    ts                timestamptz NOT NULL,
    cpu_percent       real        NOT NULL,
    mem_used_bytes    bigint      NOT NULL,
    mem_total_bytes   bigint      NOT NULL,
    disk_used_bytes   bigint      NOT NULL,
    disk_total_bytes  bigint      NOT NULL,
    net_rx_bytes      bigint      NOT NULL,
    net_tx_bytes      bigint      NOT NULL,
    flows_active      bigint      NOT NULL,
    store_dropped     bigint      NOT NULL,
    capture           jsonb       NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX system_metrics_device ON system_metrics (device, ts);

CREATE TABLE analyses (
    device         text        NOT NULL,
    seq            bigint      NOT NULL,
    ts             timestamptz NOT NULL,
    model          text        NOT NULL,
    model_version  text        NOT NULL,
    rows           integer     NOT NULL,
    score_min      real        NOT NULL,
    score_mean     real        NOT NULL,
    score_max      real        NOT NULL,
    threshold      real        NOT NULL,
    flagged        integer     NOT NULL,
    latency_us     bigint      NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX analyses_device ON analyses (device, ts);

-- Anomaly episodes; a later message with the same (device, edge_id) updates the episode.
-- Few and mutable (state, notes), so not partitioned: retention deletes by last_seen.
CREATE TABLE anomalies (
    id          bigserial   PRIMARY KEY,
    device      text        NOT NULL,
    edge_id     bigint      NOT NULL,
    seq         bigint      NOT NULL,
    kind        text        NOT NULL,
    severity    text        NOT NULL,
    confidence  real        NOT NULL,
    score       real        NOT NULL,
    threshold   real        NOT NULL,
    detector    text        NOT NULL,
    src_ip      inet        NOT NULL,
    dst_ip      inet,
    dst_port    integer,
    protocol    smallint,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    count       bigint      NOT NULL,
    reasons     jsonb       NOT NULL,
    state       text        NOT NULL DEFAULT 'new',
    UNIQUE (device, edge_id)
);
CREATE INDEX anomalies_last_seen ON anomalies (last_seen);

-- The partition of `parent` for `day` (UTC), made if missing; safe when hubs race to make it.
CREATE FUNCTION tapwatch_ensure_partition(parent text, day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := parent || '_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(part) IS NULL THEN
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, parent, (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END IF;
END $$;
