-- Evidence marking finds one host's ring packets by its address: it walked the time index
-- from the episode's start, through every ring packet and all the evidence already kept.
CREATE INDEX packets_ring_src ON packets (src, ts_us) WHERE anomaly_id IS NULL;
CREATE INDEX packets_ring_dst ON packets (dst, ts_us) WHERE anomaly_id IS NULL;
