-- Cheaper writes (issue 11, performance): every succeeded job paid for six
-- b-tree entries (a failed one seven). Two served only narrow lookups:
--
-- * the status index: every query that filters by status asks for a rare
--   one (dead_lettered, replaying); a search for 'succeeded', nearly every
--   row, walks received_at instead. Partial, it takes no entry for a
--   succeeded job.
-- * the finished_at index: only the console's live rates read it, as a
--   range over the last minutes. finished_at grows with the table's
--   physical order, which is what a BRIN index summarises: a few pages
--   for the whole table instead of an entry per row. New ranges are
--   summarised by autovacuum (autosummarize) and, where that does not run,
--   by the worker every 100,000 rows (src/store/record.rs).
DROP INDEX tag_removal_jobs_status;
CREATE INDEX tag_removal_jobs_status ON tag_removal_jobs (status, received_at) WHERE status <> 'succeeded';
DROP INDEX tag_removal_jobs_finished_at;
CREATE INDEX tag_removal_jobs_finished_at ON tag_removal_jobs USING brin (finished_at) WITH (autosummarize = on);
