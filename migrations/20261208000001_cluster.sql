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
-- time, not draining) share the partitions of each key space they serve: 'orders' for instances
-- that run the order role, 'skus' for those that run the inventory role. Times are PostgreSQL's,
-- one clock for everyone.
CREATE TABLE cluster_instances (
    instance_id  text PRIMARY KEY CHECK (char_length(instance_id) BETWEEN 1 AND 128),
    http_address text NOT NULL,
    key_spaces   text[] NOT NULL CHECK (key_spaces <@ ARRAY['orders', 'skus']),
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining     boolean NOT NULL DEFAULT false
);

-- One row per partition of each key space. epoch rises on every acquisition and never falls, so
-- a write conditioned on the epoch its owner acquired is refused once the partition changed hands
-- (a stale owner: paused, cut off, its lease taken over), whatever the clocks say. lease_until
-- only decides when a silent owner's partition may be taken over.
CREATE TABLE partition_leases (
    key_space   text NOT NULL CHECK (key_space IN ('orders', 'skus')),
    partition   integer NOT NULL CHECK (partition BETWEEN 0 AND 4095),
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    lease_until timestamptz NOT NULL DEFAULT 'epoch',
    acquired_at timestamptz,
    PRIMARY KEY (key_space, partition)
);
