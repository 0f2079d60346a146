-- The operator console and fleet-wide pause (CONTRACT §7, §9).

-- Rows carry their app (CONTRACT §7); null for rows written before, or by a
-- single-app worker that does not fill it (the console then reads them as
-- the deployment's own app).
ALTER TABLE tag_removal_jobs ADD COLUMN sdkappid bigint NULL;
ALTER TABLE api_calls ADD COLUMN sdkappid bigint NULL;
-- The console's search by app, newest first (keyset on received_at).
CREATE INDEX tag_removal_jobs_sdkappid ON tag_removal_jobs (sdkappid, received_at) WHERE sdkappid IS NOT NULL;
-- The console's live throughput reads the last minutes of finished jobs;
-- without this it would scan the whole table every few seconds.
CREATE INDEX tag_removal_jobs_finished_at ON tag_removal_jobs (finished_at) WHERE finished_at IS NOT NULL;

-- One row per paused app. Workers poll it; a row present means "take none
-- of this app's jobs", so pause and resume are a single insert or delete
-- that every replica sees, whichever process issued it.
CREATE TABLE app_pauses (
    sdkappid  bigint      PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text        NOT NULL,
    reason    text        NULL
);

-- Every operator action, from the console or the command line: who (the
-- console token's name, or cli:$USER), when, what, with which filter, and
-- how many jobs or messages it touched.
CREATE TABLE console_actions (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    who      text        NOT NULL,
    action   text        NOT NULL,
    filter   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    affected bigint      NOT NULL DEFAULT 0
);
CREATE INDEX console_actions_at ON console_actions (at);
