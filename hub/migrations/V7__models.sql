-- Tapwatch hub, version 7: models pushed to the edges (issue 18).
--
-- A model uploaded at the hub, checked there as an edge checks it (its metadata, its features,
-- its fixture rows run), kept with its fixture. The fleet's configuration names a model by the
-- SHA-256 of its file (`models.classifier`, `models.autoencoder`); edges fetch the file and the
-- fixture by those hashes, and the hub signs what it names when it sends a configuration.

CREATE TABLE models (
    sha256          text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    kind            text NOT NULL CHECK (kind IN ('autoencoder', 'classifier')),
    name            text NOT NULL,
    version         text NOT NULL,
    -- The features it reads, in order, and a classifier's class names.
    features        jsonb NOT NULL,
    classes         jsonb NOT NULL DEFAULT '[]',
    size            bigint NOT NULL,
    onnx            bytea NOT NULL,
    fixture_sha256  text NOT NULL CHECK (fixture_sha256 ~ '^[0-9a-f]{64}$'),
    fixture         bytea NOT NULL,
    fixture_rows    integer NOT NULL,
    author          text NOT NULL,
    comment         text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX models_created ON models (created_at DESC);
