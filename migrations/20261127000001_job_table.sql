-- One row per API call: what was sent, what came back, how long it took.
CREATE TABLE api_calls (
    call_id     uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    latency_ms  integer     NOT NULL,
    entries     integer     NOT NULL,
    attempt     integer     NOT NULL,
    http_status integer     NULL,
    error_code  integer     NULL,
    error_info  text        NULL,
    outcome     text        NOT NULL
);
CREATE INDEX api_calls_started_at ON api_calls (started_at);
CREATE INDEX api_calls_error_code ON api_calls (error_code, started_at) WHERE error_code IS NOT NULL AND error_code <> 0;

-- One row per job id (CONTRACT §4). Terminal statuses: succeeded, dead_lettered.
CREATE TABLE tag_removal_jobs (
    job_id       text        PRIMARY KEY,
    account      text        NULL,
    tags         text[]      NOT NULL,
    status       text        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    error_code   integer     NULL,
    error_info   text        NULL,
    received_at  timestamptz NOT NULL,
    finished_at  timestamptz NULL,
    -- The last api_calls row that carried the job. No foreign key: a job's
    -- calls may be written by a concurrent statement of the same worker.
    last_call_id uuid        NULL
);
-- The audit queries (tagsweep jobs, tagsweep replay --from table) filter by
-- account, status, error code and a received_at range, newest first.
CREATE INDEX tag_removal_jobs_account ON tag_removal_jobs (account, received_at);
CREATE INDEX tag_removal_jobs_status ON tag_removal_jobs (status, received_at);
CREATE INDEX tag_removal_jobs_received_at ON tag_removal_jobs (received_at);
CREATE INDEX tag_removal_jobs_error_code ON tag_removal_jobs (error_code, received_at) WHERE error_code IS NOT NULL;
