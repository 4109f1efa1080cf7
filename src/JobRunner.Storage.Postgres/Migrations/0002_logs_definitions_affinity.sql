-- JobRunner schema, version 2: job logs and job definitions, shared by every host; the jobs' affinity; the process
-- that wrote each history row (other hosts relay the rows they did not write to their watchers).

ALTER TABLE {schema}.job_history ADD COLUMN instance text;

-- A job's affinity expression (JobRequest.Affinity), which the worker's scheduler matches against its labels.
ALTER TABLE {schema}.jobs ADD COLUMN affinity text;

-- Log lines, by job and job-wide offset. Offsets come from job_log_heads (one row per job that logged), so they continue
-- across attempts and hosts.
CREATE TABLE {schema}.job_logs (
    job_id   uuid        NOT NULL,
    "offset" bigint      NOT NULL,
    attempt  integer     NOT NULL,
    at       timestamptz NOT NULL,
    stream   smallint    NOT NULL,
    message  text        NOT NULL,
    PRIMARY KEY (job_id, "offset")
);

CREATE TABLE {schema}.job_log_heads (
    job_id      uuid   PRIMARY KEY,
    next_offset bigint NOT NULL
);

-- Definitions: every version, and the aliases of each definition's latest version.
CREATE TABLE {schema}.definitions (
    name       text        NOT NULL,
    version    integer     NOT NULL,
    body       jsonb       NOT NULL,
    retry      jsonb,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE {schema}.definition_heads (
    name    text    PRIMARY KEY,
    latest  integer NOT NULL
);

CREATE TABLE {schema}.definition_aliases (
    alias text PRIMARY KEY,
    name  text NOT NULL REFERENCES {schema}.definition_heads (name) ON DELETE CASCADE
);
