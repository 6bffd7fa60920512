-- The cluster: a fixed number of partitions, the instances that are alive, and which instance
-- owns each partition under which epoch (docs/scaling.md).

-- One row, written by the first instance that starts on this database: the partition count
-- cannot change afterwards, because every key would hash to another partition.
CREATE TABLE cluster_config (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partition_count integer NOT NULL CHECK (partition_count BETWEEN 1 AND 4096),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Instances announce themselves and heartbeat here; the live ones (heartbeat within the lease
-- time, not draining) share the partitions. Times are PostgreSQL's, one clock for everyone.
CREATE TABLE cluster_instances (
    instance_id  text PRIMARY KEY CHECK (char_length(instance_id) BETWEEN 1 AND 128),
    http_address text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining     boolean NOT NULL DEFAULT false
);

-- One row per partition. epoch rises on every acquisition and never falls: every write an owner
-- makes for the partition is conditioned on the epoch it acquired, so a stale owner (paused,
-- partitioned away, its lease taken over) is refused whatever the clocks say. lease_until only
-- decides when a silent owner's partition may be taken over.
CREATE TABLE partition_leases (
    partition   integer PRIMARY KEY CHECK (partition BETWEEN 0 AND 4095),
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    lease_until timestamptz NOT NULL DEFAULT 'epoch',
    acquired_at timestamptz
);
