-- The seq of the last offline status (the MQTT last will) this device may have left at the
-- broker. The status seq is the wall clock in milliseconds, so that it grows over restarts
-- without a write per connection; after the clock steps back it would not, and the hub, which
-- takes a status only above the seq it has, would keep an old will's "offline" for as long as
-- the step. Each connection's online status starts above this floor.
CREATE TABLE sync_will (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    seq     INTEGER NOT NULL
);
