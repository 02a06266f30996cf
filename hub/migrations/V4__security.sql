-- Tapwatch hub, version 4: what the security review asked of the schema.

-- Sums of counters saturate at bigint's largest value instead of failing: each counter an edge
-- sends is at most 2^63-1 (the contract refuses more), but a sum of many can exceed it.
CREATE FUNCTION tapwatch_sat(v numeric) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(greatest(v, -9223372036854775808), 9223372036854775807)::bigint
$$;

-- What each message's (device, stream, seq) was taken with: a later message with the same key
-- and other content is not a resend but a conflict (a reset edge, or a forgery), kept as a dead
-- letter instead of dropped as a duplicate. NULL for rows from before this version.
ALTER TABLE ingest_log ADD COLUMN digest bytea;

-- The sequence of each device's streams as the hub saw it: the highest seq, how many distinct
-- seqs were taken (last_seq - received is how many below it never came), arrivals below the
-- highest (late, or an edge that started again from 1), and conflicts.
CREATE TABLE device_streams (
    device       text   NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    stream       text   NOT NULL,
    last_seq     bigint NOT NULL DEFAULT 0,
    received     bigint NOT NULL DEFAULT 0,
    regressions  bigint NOT NULL DEFAULT 0,
    conflicts    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (device, stream)
);

-- A device's broker password for the embedded broker, as its SHA-256 (the password is 32 random
-- bytes, so a fast hash is enough): set by `tapwatch-hub device add`, checked at CONNECT.
ALTER TABLE devices ADD COLUMN mqtt_secret_hash bytea;
