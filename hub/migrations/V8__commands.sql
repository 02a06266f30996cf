-- Tapwatch hub, version 8: commands to the edges (issue 18).
--
-- Something an operator asks one edge to do at once (read its file again, try the hub's
-- configuration again), sent on `tapwatch/v1/{device}/commands` (not retained: a command is
-- for now, an edge offline misses it) and answered on `commands/result`.

CREATE TABLE device_commands (
    id            bigserial PRIMARY KEY,
    device        text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    command       text NOT NULL CHECK (command IN ('reload', 'retry_config')),
    author        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Handed to the broker.
    published_at  timestamptz,
    -- The edge's answer: applied (done), refused or failed, with what it did or why not.
    result        text CHECK (result IN ('applied', 'refused', 'failed')),
    detail        text NOT NULL DEFAULT '',
    result_at     timestamptz
);

CREATE INDEX device_commands_device ON device_commands (device, id DESC);
CREATE INDEX device_commands_unpublished ON device_commands (id) WHERE published_at IS NULL;

-- A new command wakes the ingest (which sends it); its sending and its answer update
-- dashboards: the live feed's `command` events.
CREATE FUNCTION tapwatch_notify_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tapwatch_live', json_build_object(
        'type', 'command', 'device', NEW.device, 'id', NEW.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER device_commands_notify AFTER INSERT OR UPDATE OF published_at, result ON device_commands
    FOR EACH ROW EXECUTE FUNCTION tapwatch_notify_command();
