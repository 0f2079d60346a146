-- Seeds a scratch database with 10,000,000 job rows spread evenly over the
-- last 60 days (so about half are older than 30 days) and one call row per
-- 100 jobs, shaped like the worker's own rows, to measure `tagsweep prune`
-- and the table's size per row. Run against a scratch database:
--
--   createdb -h 127.0.0.1 -U postgres tagsweep_prune_bench
--   cat migrations/*.sql benches/prune_seed.sql | psql -h 127.0.0.1 -U postgres -d tagsweep_prune_bench
--   time tagsweep prune --database-url postgres://postgres@127.0.0.1:5432/tagsweep_prune_bench --older-than 30d
\timing on
INSERT INTO tag_removal_jobs (job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at, last_call_id)
SELECT gen_random_uuid()::text,
       'user-' || lpad((i % 1000000)::text, 7, '0'),
       ARRAY['spring-sale', 'vip'],
       CASE WHEN i % 1000 = 0 THEN 'dead_lettered' ELSE 'succeeded' END,
       1,
       CASE WHEN i % 1000 = 0 THEN 70107 END,
       CASE WHEN i % 1000 = 0 THEN 'account not imported; tags not removed: spring-sale, vip' END,
       now() - interval '60 days' * (i::float8 / 10000000),
       now() - interval '60 days' * (i::float8 / 10000000) + interval '120 ms',
       gen_random_uuid()
FROM generate_series(1, 10000000) AS i;
INSERT INTO api_calls (call_id, started_at, latency_ms, entries, attempt, http_status, error_code, error_info, outcome)
SELECT gen_random_uuid(), now() - interval '60 days' * (i::float8 / 100000), 48, 100, 1, 200, 0, '', 'success'
FROM generate_series(1, 100000) AS i;
VACUUM ANALYZE tag_removal_jobs;
VACUUM ANALYZE api_calls;
SELECT count(*) AS jobs,
       pg_size_pretty(pg_total_relation_size('tag_removal_jobs')) AS jobs_total,
       pg_total_relation_size('tag_removal_jobs') / count(*) AS bytes_per_job_row,
       pg_relation_size('tag_removal_jobs') / count(*) AS heap_bytes_per_job_row
FROM tag_removal_jobs;
SELECT count(*) AS calls, pg_total_relation_size('api_calls') / count(*) AS bytes_per_call_row FROM api_calls;
