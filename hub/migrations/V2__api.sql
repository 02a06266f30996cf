-- Tapwatch hub, version 2: the API's own tables (users, sessions, tokens, the audit log, notes,
-- suppression rules, evidence) and the notifications that feed live push.

CREATE TABLE users (
    id             bigserial   PRIMARY KEY,
    username       text        NOT NULL UNIQUE,
    -- argon2id, PHC string format.
    password_hash  text        NOT NULL,
    role           text        NOT NULL CHECK (role IN ('admin', 'analyst', 'viewer')),
    disabled       boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Browser sessions. Only the SHA-256 of the cookie's secret is kept.
CREATE TABLE sessions (
    secret_hash  bytea       PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Sent back in X-CSRF-Token on every change made with the cookie.
    csrf         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- API tokens for programs: a token acts as its user, with its user's role.
CREATE TABLE api_tokens (
    id          bigserial   PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    secret_hash bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    last_used   timestamptz
);

-- Every change made through the API, and every login.
CREATE TABLE audit_log (
    id       bigserial   PRIMARY KEY,
    ts       timestamptz NOT NULL DEFAULT now(),
    user_id  bigint,
    actor    text        NOT NULL,
    action   text        NOT NULL,
    target   text        NOT NULL,
    detail   jsonb       NOT NULL DEFAULT '{}',
    ip       inet
);
CREATE INDEX audit_log_ts ON audit_log (ts);

ALTER TABLE anomalies
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text,
    ADD COLUMN resolved_at     timestamptz,
    ADD COLUMN resolved_by     text;
CREATE INDEX anomalies_list ON anomalies (last_seen DESC, id DESC);
CREATE INDEX anomalies_device ON anomalies (device, last_seen DESC);

CREATE TABLE anomaly_notes (
    id          bigserial   PRIMARY KEY,
    anomaly_id  bigint      NOT NULL REFERENCES anomalies (id) ON DELETE CASCADE,
    ts          timestamptz NOT NULL DEFAULT now(),
    author      text        NOT NULL,
    body        text        NOT NULL
);
CREATE INDEX anomaly_notes_anomaly ON anomaly_notes (anomaly_id);

-- Anomalies matching a rule are hidden from lists and live push (and counted as suppressed).
-- Every non-null field must match; a rule with none is refused by the API.
CREATE TABLE suppression_rules (
    id          bigserial   PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    device      text,
    kind        text,
    host        inet,
    net         cidr,
    port        integer,
    comment     text        NOT NULL DEFAULT ''
);

-- Live push: one channel, JSON payloads small enough for NOTIFY (8000 bytes).
CREATE FUNCTION tapwatch_notify_anomaly() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tapwatch_live', json_build_object(
        'type', CASE WHEN TG_OP = 'INSERT' THEN 'anomaly' ELSE 'anomaly_update' END,
        'id', NEW.id, 'device', NEW.device, 'kind', NEW.kind, 'severity', NEW.severity,
        'state', NEW.state, 'src_ip', host(NEW.src_ip), 'count', NEW.count,
        'confidence', NEW.confidence,
        'first_seen', NEW.first_seen, 'last_seen', NEW.last_seen)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER anomalies_notify AFTER INSERT OR UPDATE ON anomalies
    FOR EACH ROW EXECUTE FUNCTION tapwatch_notify_anomaly();

CREATE FUNCTION tapwatch_notify_device() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify('tapwatch_live', json_build_object(
            'type', 'device', 'device', NEW.id, 'state', NEW.state,
            'version', NEW.version, 'last_seen', NEW.last_seen)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION tapwatch_notify_device();

CREATE FUNCTION tapwatch_notify_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tapwatch_live', json_build_object(
        'type', 'stats', 'device', NEW.device, 'interval_start', NEW.interval_start,
        'interval_end', NEW.interval_end, 'packets', NEW.packets, 'bytes', NEW.bytes,
        'tcp_packets', NEW.tcp_packets, 'udp_packets', NEW.udp_packets,
        'icmp_packets', NEW.icmp_packets, 'other_packets', NEW.other_packets)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER traffic_stats_notify AFTER INSERT ON traffic_stats
    FOR EACH ROW EXECUTE FUNCTION tapwatch_notify_stats();

-- Top ports and talkers by the hour, so a day's mix reads 24 rows per device, not every interval.
CREATE TABLE traffic_top_1h (
    device    text        NOT NULL,
    bucket    timestamptz NOT NULL,
    -- 'port' (key: "protocol/port") or 'host' (key: the address).
    what      text        NOT NULL,
    key       text        NOT NULL,
    packets   bigint      NOT NULL,
    bytes     bigint      NOT NULL,
    PRIMARY KEY (device, bucket, what, key)
);
CREATE INDEX traffic_top_1h_bucket ON traffic_top_1h (bucket);

-- Evidence: the pcap an edge made of an anomaly's packets (kept whole, as the edge wrote it).
CREATE TABLE anomaly_evidence (
    device       text        NOT NULL,
    edge_id      bigint      NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    packets      integer     NOT NULL,
    pcap         bytea       NOT NULL,
    PRIMARY KEY (device, edge_id)
);
