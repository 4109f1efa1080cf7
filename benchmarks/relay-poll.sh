#!/usr/bin/env bash
# The PostgreSQL event relay's database work per poll, on a throwaway server (started and stopped here): the window read
# it had until migration 0004 (the ids of the last 5 s of history, then the details of the rows not yet published)
# against the cursor read (the rows after the cursor only). The schema is the shipped migrations'; the history holds
# 15 s of rows written by another host in transactions of 300 rows (100 jobs x 3 transitions), WINDOW of them in the last
# 5 s, of which the last NEW rows are the ones this poll has not published yet.
# Usage: benchmarks/relay-poll.sh [WINDOW] [NEW]   (defaults 50,000 and 2,500)
set -euo pipefail
cd "$(dirname "$0")/.."
window="${1:-50000}"
new="${2:-2500}"
source benchmarks/throwaway-postgres.sh
bench_schema
q -v window="$window" <<'SQL'
INSERT INTO bench.jobs (id, tenant, workload, priority, input, state, ready_at, enqueued_at, created_at, updated_at)
SELECT gen_random_uuid(), 'default', 'work', 5, '\x00', 3, now(), now(), now(), now() FROM generate_series(1, :window);
CREATE TABLE public.bench_jobs AS SELECT id, row_number() OVER () AS n FROM bench.jobs;
CREATE PROCEDURE public.bench_fill(total int) LANGUAGE plpgsql AS $$
DECLARE
  batch int;
BEGIN
  FOR batch IN 0 .. (total / 3 - 1) / 100 LOOP
    INSERT INTO bench.job_history (job_id, at, state, attempt, fence, instance)
    SELECT j.id, timestamptz '2026-01-01 00:00:00+00' + (batch * 300 + s * 100 + j.n % 100) * (interval '15 s' / total), s, 1, 1, 'another-host'
    FROM public.bench_jobs j, generate_series(0, 2) s
    WHERE j.n > batch * 100 AND j.n <= (batch + 1) * 100
    ORDER BY s, j.n;
    COMMIT;
  END LOOP;
END $$;
CALL public.bench_fill(3 * :window);
ANALYZE bench.jobs;
ANALYZE bench.job_history;
SQL

# The poll's state: the rows not yet published are the newest NEW; the cursor stands on the row before them.
q -At -v new="$new" >"$work/state" <<'SQL'
SELECT array_agg(id ORDER BY id)::text FROM (SELECT id FROM bench.job_history ORDER BY xact_id DESC, id DESC LIMIT :new) n;
SELECT xact_id || ' ' || id FROM bench.job_history ORDER BY xact_id DESC, id DESC OFFSET :new LIMIT 1;
SQL
ids="$(sed -n 1p "$work/state")"
read -r xact id < <(sed -n 2p "$work/state")

cat >"$work/old-ids.sql" <<SQL
SELECT id FROM bench.job_history WHERE at >= timestamptz '2026-01-01 00:00:10+00' AND instance IS DISTINCT FROM 'me';
SQL
cat >"$work/old-details.sql" <<SQL
SELECT h.id, h.job_id, h.at, h.state, h.attempt, h.message, j.tenant, j.workload,
       (SELECT p.state FROM bench.job_history p WHERE p.job_id = h.job_id AND p.id < h.id ORDER BY p.id DESC LIMIT 1)
FROM bench.job_history h JOIN bench.jobs j ON j.id = h.job_id
WHERE h.id = ANY('$ids'::bigint[])
ORDER BY h.id;
SQL
# The relay's statement (PostgresEventRelay), after JobRows.IndexPathsOnly in the same implicit transaction.
cat >"$work/cursor.sql" <<SQL
BEGIN;
SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_hashjoin', 'off', true), set_config('enable_seqscan', 'off', true);
SELECT x.xmin, h.xact_id, h.id, h.job_id, h.at, h.state, h.attempt, h.message, j.tenant, j.workload,
       p.state, p.xact_id, p.id, p.instance IS DISTINCT FROM 'me'
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) x
LEFT JOIN LATERAL (
    SELECT * FROM bench.job_history h
    WHERE h.xact_id < x.xmin AND (h.xact_id, h.id) > ('$xact'::xid8, $id) AND h.instance IS DISTINCT FROM 'me'
    ORDER BY h.xact_id, h.id
    LIMIT 10000) h ON true
LEFT JOIN bench.jobs j ON j.id = h.job_id
LEFT JOIN LATERAL (
    SELECT p.state, p.xact_id, p.id, p.instance FROM bench.job_history p
    WHERE p.job_id = h.job_id AND p.id < h.id
    ORDER BY p.id DESC
    LIMIT 1) p ON true
ORDER BY h.xact_id, h.id;
COMMIT;
SQL

explain() {
  # The plan's top line (rows), its buffers and execution time, after a warm-up run.
  q -f "$1" >/dev/null
  { sed '/^BEGIN;$/d; /^COMMIT;$/d; /set_config/d' "$1" | sed '1s/^/EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) /'; } >"$work/explain.sql"
  if grep -q set_config "$1"; then
    { echo "BEGIN;"; grep set_config "$1"; cat "$work/explain.sql"; echo "COMMIT;"; } >"$work/explain-tx.sql"
    q -f "$work/explain-tx.sql" | grep -v -E '^(BEGIN|COMMIT|.*set_config.*|-+\+.*| off .*|\(1 row\))$' >"$work/plan"
  else
    q -f "$work/explain.sql" >"$work/plan"
  fi
  local rows buffers time
  rows="$(grep -m1 -o 'rows=[0-9]*' "$work/plan" | cut -d= -f2)"
  buffers="$(grep -m1 -o 'shared hit=[0-9]*\( read=[0-9]*\)\?' "$work/plan")"
  time="$(grep -o 'Execution Time: [0-9.]* ms' "$work/plan" | grep -o '[0-9.]* ms')"
  local latency
  latency="$(pgbench -n -c 1 -t 40 -f "$1" 2>/dev/null | grep -o 'latency average = [0-9.]* ms' | grep -o '[0-9.]* ms')"
  printf '| %s | %s | %s | %s | %s |\n' "$2" "$rows" "$buffers" "$time" "$latency"
}

echo
echo "History rows: $(q -At -c "SELECT count(*) FROM bench.job_history"), in the 5 s window: $(q -At -c "SELECT count(*) FROM bench.job_history WHERE at >= timestamptz '2026-01-01 00:00:10+00'"); not yet published: $new (the cursor stands at xact_id $xact, id $id)."
echo
echo "| read | rows returned | buffers (top node) | execution time | round trip, pgbench average of 40 |"
echo "|---|---:|---|---:|---:|"
explain "$work/old-ids.sql" "window: ids of the last 5 s"
explain "$work/old-details.sql" "window: details of the new rows"
explain "$work/cursor.sql" "cursor: the new rows"
