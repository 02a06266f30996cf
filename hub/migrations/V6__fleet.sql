-- Tapwatch hub, version 6: fleet configuration (issue 18).
--
-- What an operator sets for the edges, in layers merged in this order (JSON Merge Patch): the
-- global document, the device's group's, the device's own. Every change of a layer is a new
-- revision, kept with its author, time and comment; a layer's document is its newest revision.
-- Rolling back is a new revision with an earlier one's content.

CREATE TABLE device_groups (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE devices ADD COLUMN group_name text REFERENCES device_groups (name) ON DELETE SET NULL;

CREATE TABLE config_revisions (
    id          bigserial PRIMARY KEY,
    -- global (target ''), group (target: its name), device (target: its id).
    scope       text NOT NULL CHECK (scope IN ('global', 'group', 'device')),
    target      text NOT NULL,
    -- The layer's revision number, from 1 per (scope, target).
    revision    integer NOT NULL,
    document    jsonb NOT NULL,
    hash        text NOT NULL,
    author      text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (scope, target, revision)
);

-- Per device: what the hub wants it to run (the layers merged) and what it reported running.
-- `desired_revision` grows with each change of the merged document; `published_revision` is
-- the one last handed to the broker (retained on the device's `config` topic).
CREATE TABLE device_config (
    device              text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    desired_revision    bigint NOT NULL DEFAULT 0,
    desired_hash        text NOT NULL DEFAULT '',
    desired             jsonb NOT NULL DEFAULT '{}',
    -- The layer revisions (config_revisions.id) merged into it.
    layers              bigint[] NOT NULL DEFAULT '{}',
    desired_at          timestamptz,
    published_revision  bigint NOT NULL DEFAULT 0,
    -- From the edge: its `config/applied` answers and its status messages, the newest by the
    -- edge's own time.
    applied_revision    bigint NOT NULL DEFAULT 0,
    applied_hash        text NOT NULL DEFAULT '',
    applied_at          timestamptz,
    -- The answer to the newest revision it answered: applied, refused or failed; its error.
    result_revision     bigint NOT NULL DEFAULT 0,
    result              text,
    error               text NOT NULL DEFAULT '',
    result_at           timestamptz
);

-- A device's desired revision never goes back (a rollback is a new revision).
CREATE SEQUENCE device_config_revision;

-- Live: a device's configuration state changed (desired, applied, or an answer), for the
-- dashboard's fleet pages.
CREATE FUNCTION tapwatch_notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
       OR NEW.desired_hash IS DISTINCT FROM OLD.desired_hash
       OR NEW.applied_hash IS DISTINCT FROM OLD.applied_hash
       OR NEW.result_revision IS DISTINCT FROM OLD.result_revision
       OR NEW.result IS DISTINCT FROM OLD.result THEN
        PERFORM pg_notify('tapwatch_live', json_build_object(
            'type', 'config', 'device', NEW.device)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER device_config_notify AFTER INSERT OR UPDATE ON device_config
    FOR EACH ROW EXECUTE FUNCTION tapwatch_notify_config();
