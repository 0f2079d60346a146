#!/usr/bin/env bash
# Times every page of `tagsweep console` on a 1,000,000-row job table (and
# 1,000,000 API calls), and shows the plan of each search: every one must
# walk an index. Prints p50 and max of 20 loads per page.
# Usage: benches/console_pages.sh [postgres://postgres@127.0.0.1:5432]
# Needs the binary: cargo build --release (or TAGSWEEP_BIN=path).
set -euo pipefail
server=${1:-postgres://postgres@127.0.0.1:5432}
db=tagsweep_console_bench
addr=127.0.0.1:8099
cd "$(dirname "$0")/.."
bin=${TAGSWEEP_BIN:-${CARGO_TARGET_DIR:-target}/release/tagsweep}
[[ -x $bin ]] || { echo "build it first: cargo build --release (or set TAGSWEEP_BIN)" >&2; exit 2; }
psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"

DATABASE_URL="$server/$db" TAGSWEEP_SDKAPPID=1400000000 TAGSWEEP_DEAD_LETTER_QUEUE=tagsweep.bench.dead \
  "$bin" console --addr "$addr" --app 20000001 >/tmp/console_bench.log 2>&1 &
console=$!
trap 'kill $console 2>/dev/null' EXIT
until curl -sf "http://$addr/actions" >/dev/null; do sleep 0.2; done  # migrated and serving

echo "seeding 1,000,000 jobs and 1,000,000 calls (one a second over 11.5 days)..." >&2
psql "$server/$db" -q <<'SQL'
INSERT INTO api_calls (call_id, started_at, latency_ms, entries, attempt, http_status, error_code, error_info, outcome, sdkappid)
SELECT md5('c' || g)::uuid, now() - (g || ' seconds')::interval, 40, 100, 1, 200,
       CASE WHEN g % 100 = 0 THEN (ARRAY[91000, 70107, 90040])[1 + g % 3] ELSE 0 END,
       NULL, CASE WHEN g % 100 = 0 THEN 'permanent' ELSE 'success' END,
       CASE WHEN g % 3 = 0 THEN 20000001 ELSE 1400000000 END
FROM generate_series(1, 1000000) g;
INSERT INTO tag_removal_jobs (job_id, account, tags, status, attempts, error_code, error_info, received_at, finished_at, last_call_id, sdkappid)
SELECT 'job-' || g, 'user' || (g % 200000), ARRAY['t' || (g % 50)],
       CASE WHEN g % 100 = 0 THEN 'dead_lettered' ELSE 'succeeded' END, 1,
       CASE WHEN g % 100 = 0 THEN (ARRAY[91000, 70107, 90040])[1 + g % 3] END,
       CASE WHEN g % 100 = 0 THEN 'refused' END,
       now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval + interval '1 second',
       md5('c' || g)::uuid, CASE WHEN g % 3 = 0 THEN 20000001 ELSE 1400000000 END
FROM generate_series(1, 1000000) g;
ANALYZE tag_removal_jobs; ANALYZE api_calls;
-- What the worker does every 100,000 rows (and autovacuum's autosummarize):
-- the finished_at BRIN index knows the new pages' ranges.
SELECT brin_summarize_new_values('tag_removal_jobs_finished_at');
SQL

cursor=$(date -u -d '-3 hours' +%Y-%m-%dT%H:%M:%SZ)
pages=(
  "/" "/api/rates" "/jobs" "/jobs?account=user42" "/jobs?status=dead_lettered"
  "/jobs?error_code=70107" "/jobs?app=20000001" "/jobs?since=2h&until=1h"
  "/jobs?status=dead_lettered&before_t=$cursor&before_id=job-9" "/jobs/job-4242" "/dead" "/actions"
)
printf '%-62s %8s %8s\n' page p50_ms max_ms
for page in "${pages[@]}"; do
  curl -sf -o /dev/null "http://$addr$page" || { echo "$page failed" >&2; exit 1; }  # warm
  times=$(for _ in $(seq 20); do curl -s -o /dev/null -w '%{time_total}\n' "http://$addr$page"; done | sort -n)
  p50=$(sed -n 10p <<<"$times"); max=$(tail -1 <<<"$times")
  printf '%-62s %8.1f %8.1f\n' "$page" "$(bc -l <<<"$p50*1000")" "$(bc -l <<<"$max*1000")"
done

sel="SELECT job_id, account, status, attempts, error_code, received_at, finished_at, sdkappid, replay_count FROM tag_removal_jobs"
explain() {
  echo "== $1"
  psql "$server/$db" -Atc "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) $2" | grep -E "Index|Seq Scan|Execution"
}
explain "jobs: newest" "$sel ORDER BY received_at DESC, job_id DESC LIMIT 51"
explain "jobs: by account" "$sel WHERE account = 'user42' ORDER BY received_at DESC, job_id DESC LIMIT 51"
explain "jobs: by status, next page" "$sel WHERE status = 'dead_lettered' AND received_at <= '$cursor' AND (received_at < '$cursor' OR job_id < 'job-9') ORDER BY received_at DESC, job_id DESC LIMIT 51"
explain "jobs: by error code" "$sel WHERE error_code = 70107 ORDER BY received_at DESC, job_id DESC LIMIT 51"
explain "jobs: by app" "$sel WHERE sdkappid = 20000001 ORDER BY received_at DESC, job_id DESC LIMIT 51"
explain "overview: jobs/s" "SELECT sdkappid, count(*) FROM tag_removal_jobs WHERE finished_at >= now() - interval '600 seconds' GROUP BY 1"
explain "overview: calls/s" "SELECT sdkappid, count(*) FROM api_calls WHERE started_at >= now() - interval '600 seconds' GROUP BY 1"
explain "overview: refusals" "SELECT error_code, count(*) FROM api_calls WHERE error_code IS NOT NULL AND error_code <> 0 AND started_at >= now() - interval '1 hour' GROUP BY 1"
