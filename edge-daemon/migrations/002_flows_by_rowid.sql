-- Flows are written as they end, so rowid order is end order (to within the active timeout):
-- retention walks traffic_features by id, and the index on end_us, a fifth of the insert cost,
-- goes.
DROP INDEX IF EXISTS traffic_features_end;
