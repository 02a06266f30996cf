-- End-to-end acknowledgement (issue 20). Per device and stream: `acked_seq`, the highest seq with
-- every seq from 1 to it committed here or counted lost (what the hub confirms to the edge on
-- its retained `ack` topic, and the edge deletes through); `missing`, seqs above it never
-- received while later ones were; `lost`, seqs the edge said it no longer held (its outbox
-- floor, in its metrics messages) that never came, counted once each.
ALTER TABLE device_streams
    ADD COLUMN acked_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN missing   bigint NOT NULL DEFAULT 0,
    ADD COLUMN lost      bigint NOT NULL DEFAULT 0;

-- What came before this migration is taken as complete: its log may have been trimmed already.
UPDATE device_streams SET acked_seq = last_seq;
