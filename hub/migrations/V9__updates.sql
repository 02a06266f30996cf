-- Tapwatch hub, version 9: updates of the edge program (issue 19).
--
-- An update bundle (`tapwatch-edge update pack`: a tar of a manifest, the release key's
-- signature of it and the files it names), uploaded by an admin and checked as an edge reads
-- it (format, hashes; the signature too when the hub is given the release key's public half).
-- The fleet's configuration names one by the SHA-256 of its file (`update`); edges fetch it by
-- that hash, check the release key's signature and install it on trial.

CREATE TABLE updates (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    version     text NOT NULL,
    arch        text NOT NULL,
    size        bigint NOT NULL,
    -- The manifest: version, architecture, each file's name, size, mode and SHA-256.
    manifest    jsonb NOT NULL,
    bundle      bytea NOT NULL,
    author      text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX updates_created ON updates (created_at DESC);
