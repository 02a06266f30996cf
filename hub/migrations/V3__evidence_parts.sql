-- Tapwatch hub, version 3: evidence comes in parts (the `evidence` stream: each part a pcap file
-- of the packets an edge marked for an episode since its last part), kept as they came; the API
-- merges them into one pcap file in seq order.
DROP TABLE anomaly_evidence;
CREATE TABLE anomaly_evidence (
    device       text        NOT NULL,
    edge_id      bigint      NOT NULL,
    seq          bigint      NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    packets      integer     NOT NULL,
    pcap         bytea       NOT NULL,
    PRIMARY KEY (device, edge_id, seq)
);
CREATE INDEX anomaly_evidence_received ON anomaly_evidence (received_at);
