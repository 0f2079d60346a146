-- Every API call that carried a job (retries, halvings, each part of a job
-- with more than ten tags), so the console can tell a job's whole story
-- from the call log. An array on the row costs one uuid per call on a write
-- the worker makes anyway; a link table would cost a row and an index entry
-- per job per call. Rows written before this have only last_call_id.
ALTER TABLE tag_removal_jobs ADD COLUMN call_ids uuid[] NOT NULL DEFAULT '{}';
