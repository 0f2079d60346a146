-- A credential or configuration refusal, remembered per app and key
-- fingerprint, so a restarted worker with the same key does not take jobs
-- only to hand them back (each return spends a delivery of the broker's
-- limit). The fingerprint is a hash prefix, never the key or the UserSig.
-- `tagsweep resume` (or the console's) deletes the app's rows; a worker with
-- another key ignores them, and deletes them after its first accepted call.
CREATE TABLE credential_stops (
    sdkappid    bigint      NOT NULL,
    fingerprint text        NOT NULL,
    stopped_at  timestamptz NOT NULL DEFAULT now(),
    error_code  integer     NOT NULL,
    error_info  text        NOT NULL,
    fix         text        NOT NULL,
    PRIMARY KEY (sdkappid, fingerprint)
);

-- Every replay of a row appends what the row was before it (status, error,
-- when): previous_error_code/info keep only the last life, and a job may
-- be replayed more than once.
ALTER TABLE tag_removal_jobs ADD COLUMN replay_history jsonb NOT NULL DEFAULT '[]'::jsonb;
