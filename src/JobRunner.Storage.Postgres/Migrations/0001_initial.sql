-- JobRunner schema, version 1. "{schema}" is replaced by the configured (quoted) schema name.
-- States: 0 Queued, 1 Scheduled, 2 Running, 3 Succeeded, 4 Failed, 5 Cancelled.

CREATE SEQUENCE {schema}.fence_tokens AS bigint;

CREATE TABLE {schema}.jobs (
    id               uuid        PRIMARY KEY,
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    tenant           text        NOT NULL,
    workload         text        NOT NULL,
    priority         smallint    NOT NULL,
    concurrency_key  text,
    dedupe_key       text,
    correlation_id   text,
    parent_id        uuid,
    labels           jsonb,
    input            bytea       NOT NULL,
    not_before       timestamptz,
    timeout_ms       bigint,
    retry            jsonb,
    state            smallint    NOT NULL,
    -- When the job can next be taken: its enqueue time, or its due time when Scheduled.
    ready_at         timestamptz NOT NULL,
    enqueued_at      timestamptz NOT NULL,
    -- Queue visibility: a dequeued job stays hidden from other workers until then (unless leased).
    taken_until      timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    fence            bigint      NOT NULL DEFAULT 0,
    worker_id        text,
    lease_expires_at timestamptz,
    attempt_count    integer     NOT NULL DEFAULT 0,
    attempts         jsonb       NOT NULL DEFAULT '[]',
    lease_losses     integer     NOT NULL DEFAULT 0,
    checkpoint       bytea,
    progress_fraction double precision,
    progress_message text,
    cancel_requested boolean     NOT NULL DEFAULT false,
    cancel_reason    text,
    last_error       text
);

-- The dequeue order: priority first, then age; only ready states are indexed.
CREATE INDEX jobs_ready ON {schema}.jobs (priority DESC, ready_at, id) WHERE state IN (0, 1);
-- The reclaim sweep.
CREATE INDEX jobs_leases ON {schema}.jobs (lease_expires_at) WHERE state = 2;
-- Listing, oldest first.
CREATE UNIQUE INDEX jobs_seq ON {schema}.jobs (seq);
-- Retention of finished jobs.
CREATE INDEX jobs_finished ON {schema}.jobs (updated_at) WHERE state >= 3;
-- Dedupe: one live job per tenant and key.
CREATE UNIQUE INDEX jobs_dedupe ON {schema}.jobs (tenant, dedupe_key) WHERE dedupe_key IS NOT NULL AND state < 3;

-- Every state transition, for audit. Rows older than the retention are deleted by housekeeping.
CREATE TABLE {schema}.job_history (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id    uuid        NOT NULL,
    at        timestamptz NOT NULL,
    state     smallint    NOT NULL,
    attempt   integer     NOT NULL,
    fence     bigint      NOT NULL,
    worker_id text,
    message   text
);
CREATE INDEX job_history_job ON {schema}.job_history (job_id, id);
CREATE INDEX job_history_at ON {schema}.job_history (at);
