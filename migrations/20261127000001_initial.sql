-- ordersaga's initial schema: catalog and stock, reservations, order snapshots, the transactional
-- outbox, HTTP idempotency keys and the payment role's records.

-- Stock lives here. The CHECK constraints are the last line of defence against overselling: even
-- a buggy or concurrent writer in another process cannot commit a row where more units are
-- reserved than exist, or where either count is negative.
CREATE TABLE products (
    sku                 text PRIMARY KEY CHECK (sku ~ '^[A-Z0-9_-]{1,64}$'),
    name                text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    unit_price_cents    bigint NOT NULL CHECK (unit_price_cents >= 0),
    currency            char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    on_hand             bigint NOT NULL CHECK (on_hand >= 0),
    reserved            bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    low_stock_threshold bigint NOT NULL DEFAULT 0 CHECK (low_stock_threshold >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT reserved_within_on_hand CHECK (reserved <= on_hand)
);

-- One row per (order, SKU). RESERVED units count in products.reserved; COMMITTED units have left
-- on_hand; RELEASED units went back on sale. expires_at lets a sweeper free forgotten holds.
CREATE TABLE stock_reservations (
    order_id   uuid NOT NULL,
    sku        text NOT NULL REFERENCES products (sku),
    quantity   integer NOT NULL CHECK (quantity > 0),
    status     text NOT NULL CHECK (status IN ('RESERVED', 'RELEASED', 'COMMITTED')),
    expires_at timestamptz NOT NULL,
    -- The order's correlation id, so an expiry found by the sweeper is logged and published
    -- under the same id as the rest of the order.
    correlation_id text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, sku)
);
CREATE INDEX stock_reservations_expiry ON stock_reservations (expires_at) WHERE status = 'RESERVED';

-- The inventory role's inbox: one decision per order, so a redelivered order.created.v1 is never
-- reserved twice, and one that arrives after the order was cancelled is refused.
CREATE TABLE inventory_decisions (
    order_id   uuid PRIMARY KEY,
    outcome    text NOT NULL CHECK (outcome IN ('RESERVED', 'OUT_OF_STOCK', 'CANCELLED')),
    decided_at timestamptz NOT NULL DEFAULT now()
);

-- One snapshot per order: the saga's whole state as JSONB, with a version for optimistic
-- concurrency (a write on a stale version changes nothing and is reported as a conflict).
CREATE TABLE order_snapshots (
    order_id   uuid PRIMARY KEY,
    version    bigint NOT NULL CHECK (version >= 1),
    status     text NOT NULL,
    state      jsonb NOT NULL,
    -- When the current step times out (copied out of `state` so recovery can read it cheaply).
    deadline   timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Crash recovery re-arms the deadline of every live saga; keep that index small.
CREATE INDEX order_snapshots_live ON order_snapshots (deadline)
    WHERE status NOT IN ('COMPLETED', 'CANCELLED');

-- Messages committed together with the state change that produced them, published afterwards by
-- the relay and deleted once JetStream acknowledged them. message_id is the Nats-Msg-Id.
CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    message_id     uuid NOT NULL UNIQUE,
    subject        text NOT NULL,
    order_id       uuid NOT NULL,
    correlation_id text NOT NULL,
    payload        bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- POST /orders Idempotency-Key: the same key always means the same order.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash text NOT NULL,
    order_id     uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The payment role's record of each charge attempt: makes payment.requested.v1 idempotent, and
-- is the state machine that keeps a charge's status from regressing when provider webhooks arrive
-- late or twice (PROCESSING < FAILED = CANCELED < SUCCEEDED).
CREATE TABLE payments (
    order_id        uuid NOT NULL,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    status          text NOT NULL CHECK (status IN ('PROCESSING', 'FAILED', 'CANCELED', 'SUCCEEDED')),
    reference       text,
    correlation_id  text NOT NULL,
    failure_code    text,
    failure_message text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, attempt)
);
-- Webhooks are routed by the provider's id for the charge (a PaymentIntent id); one charge, one row.
CREATE UNIQUE INDEX payments_reference ON payments (reference) WHERE reference IS NOT NULL;

-- Refunds, one per charge: a redelivered refund request never refunds twice.
CREATE TABLE refunds (
    payment_reference text PRIMARY KEY,
    order_id          uuid NOT NULL,
    refund_id         text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Verified Stripe webhook events, recorded by id before the endpoint answers 2xx (duplicates are
-- acknowledged and ignored), then processed asynchronously by the payment role.
CREATE TABLE stripe_events (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    payload      jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    outcome      text
);
CREATE INDEX stripe_events_unprocessed ON stripe_events (received_at) WHERE processed_at IS NULL;

-- Messages a consumer gave up on (undecodable, permanent error, retries exhausted), kept with
-- their error for operators. Parked messages are acknowledged, so they block nothing.
CREATE TABLE dead_letters (
    id             bigserial PRIMARY KEY,
    consumer       text NOT NULL,
    subject        text NOT NULL,
    message_id     uuid,
    order_id       uuid,
    correlation_id text,
    payload        bytea NOT NULL,
    error          text NOT NULL,
    deliveries     bigint NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, message_id)
);
