#!/usr/bin/env bash
# Checks that every audit query of `tagsweep jobs` and `tagsweep replay
# --from table` is served by an index on a 1,000,000-row job table.
# Usage: benches/audit_explain.sh [postgres://postgres@127.0.0.1:5432]
set -euo pipefail
server=${1:-postgres://postgres@127.0.0.1:5432}
db=tagsweep_explain
cd "$(dirname "$0")/.."
psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for f in migrations/*.sql; do psql "$server/$db" -q -f "$f"; done
psql "$server/$db" -q <<'SQL'
INSERT INTO tag_removal_jobs (job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at)
SELECT 'job-' || g, 'user' || (g % 200000), ARRAY['t' || (g % 50)],
       CASE WHEN g % 100 = 0 THEN 'dead_lettered' ELSE 'succeeded' END, 1,
       CASE WHEN g % 100 = 0 THEN (ARRAY[91000, 70107, 90040])[1 + g % 3] END,
       CASE WHEN g % 100 = 0 THEN 'x' END,
       now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval + interval '1 second'
FROM generate_series(1, 1000000) g;
ANALYZE tag_removal_jobs;
SQL
sel="SELECT job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at, replay_count FROM tag_removal_jobs"
explain() {
  echo "== $1"
  psql "$server/$db" -Atc "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) $2" | grep -E "Index|Seq Scan|Execution"
}
explain "by account" "$sel WHERE account = 'user42' ORDER BY received_at DESC LIMIT 50"
explain "by job id" "$sel WHERE job_id = 'job-4242'"
explain "by status and time" "$sel WHERE status = 'dead_lettered' AND received_at >= now() - interval '1 day' ORDER BY received_at DESC LIMIT 50"
explain "succeeded, newest (not in the partial status index)" "$sel WHERE status = 'succeeded' ORDER BY received_at DESC LIMIT 50"
explain "by error code" "$sel WHERE error_code = 70107 ORDER BY received_at DESC LIMIT 50"
explain "by time range" "$sel WHERE received_at >= now() - interval '2 hours' AND received_at < now() - interval '1 hour' ORDER BY received_at DESC LIMIT 50"
explain "summary per hour, last day" "SELECT date_trunc('hour', received_at), status, error_code, count(*) FROM tag_removal_jobs WHERE received_at >= now() - interval '1 day' GROUP BY 1, 2, 3"
explain "replay from the table" "SELECT job_id, account, tags FROM tag_removal_jobs WHERE account IS NOT NULL AND status = 'dead_lettered' AND error_code = 70107 ORDER BY received_at, job_id"
explain "worker: already finished?" "SELECT job_id FROM tag_removal_jobs WHERE job_id = ANY(ARRAY['job-1', 'job-2']) AND status IN ('succeeded', 'dead_lettered')"
psql "$server/postgres" -qc "DROP DATABASE $db"
