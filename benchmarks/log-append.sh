#!/usr/bin/env bash
# What it costs to tell other hosts about log appends (PostgresOptions.LogEventsAcrossHosts), on a throwaway server
# (started and stopped here), as pgbench appends per second from CLIENTS clients, each append LINES lines to one of 1,000
# running jobs, durable commits:
#   off        PostgresLogStore's append alone (LogEventsAcrossHosts = false);
#   shipped    the append that also returns the job's tenant and workload (a join); PostgresDatabase.NotifyAttemptEvent
#              then sends the NOTIFY in a transaction of its own, many at a time (not part of this measurement);
#   in the tx  the first design: the NOTIFY inside the append's statement (PostgreSQL serialises notifying commits).
# The runs alternate, each round starting with a different one, so that the machine's noise hits all three. One connection LISTENs on the channel, as every host's
# background service does, and stays idle (the server queues the notifications).
# Usage: benchmarks/log-append.sh [SECONDS per run] [CLIENTS] [LINES] [ROUNDS]   (defaults 10, 4, 10, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
clients="${2:-4}"
lines="${3:-10}"
rounds="${4:-2}"
source benchmarks/throwaway-postgres.sh
bench_schema
q <<'SQL'
INSERT INTO bench.jobs (id, tenant, workload, priority, input, state, ready_at, enqueued_at, created_at, updated_at, attempt_count)
SELECT gen_random_uuid(), 'default', 'work', 5, '\x00', 2, now(), now(), now(), now(), 1 FROM generate_series(1, 1000);
CREATE TABLE public.bench_jobs AS SELECT id, row_number() OVER () AS n FROM bench.jobs;
CREATE UNIQUE INDEX ON public.bench_jobs (n);
ANALYZE;
SQL

# The append as PostgresLogStore writes it: $1 is the tail after the lines CTE.
append() {
  cat <<SQL
\\set n random(1, 1000)
WITH job AS (SELECT id FROM public.bench_jobs WHERE n = :n),
head AS (
    INSERT INTO bench.job_log_heads AS h (job_id, next_offset) SELECT id, $lines FROM job
    ON CONFLICT (job_id) DO UPDATE SET next_offset = h.next_offset + $lines
    RETURNING job_id, next_offset - $lines AS first),
lines AS (
    INSERT INTO bench.job_logs (job_id, "offset", attempt, at, stream, message)
    SELECT head.job_id, head.first + l.n - 1, 1, l.at, l.stream, l.message
    FROM head, unnest(array_fill(now(), ARRAY[$lines]), array_fill(0::smallint, ARRAY[$lines]),
                      array_fill('a line of program output, about as long as a typical one is: 64 characters'::text, ARRAY[$lines]))
         WITH ORDINALITY AS l(at, stream, message, n))$1
SQL
}
append " SELECT first FROM head;" >"$work/off.sql"
append " SELECT first, j.tenant, j.workload FROM head LEFT JOIN bench.jobs j ON j.id = head.job_id;" >"$work/shipped.sql"
append ",
n AS (SELECT pg_notify('bench_attempts', json_build_object('i', 'bench', 'k', 2, 'j', j.id, 'a', 1, 't', j.tenant, 'w', j.workload,
        'o', head.first, 'c', $lines)::text) FROM head JOIN bench.jobs j ON j.id = head.job_id)
SELECT first, (SELECT count(*) FROM n) FROM head;" >"$work/intx.sql"

# A listener, as each host has; it stays connected (and idle) for the whole run.
mkfifo "$work/listen"
psql -X -q <"$work/listen" >/dev/null &
pids+=($!)
exec 3>"$work/listen"
echo 'LISTEN bench_attempts;' >&3

tps() {
  pgbench -n -c "$clients" -j "$clients" -T "$seconds" -f "$1" 2>/dev/null | grep -o 'tps = [0-9.]*' | grep -o '[0-9.]*'
}

echo "log appends of $lines lines, $clients clients, ${seconds} s per run, $(nproc) cores, PostgreSQL $(q -At -c 'SHOW server_version')"
echo
echo "| round | off (appends/s) | shipped | ratio | NOTIFY in the append's tx | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
# Each round starts with a different scenario, so that no scenario always runs first (after the previous round's WAL).
names=(off shipped intx)
for round in $(seq 1 "$rounds"); do
  declare -A rate=()
  for k in 0 1 2; do
    name="${names[$(((round - 1 + k) % 3))]}"
    rate[$name]="$(tps "$work/$name.sql")"
  done
  printf '| %s | %.0f | %.0f | %.2f | %.0f | %.2f |\n' "$round" "${rate[off]}" "${rate[shipped]}" "$(echo "${rate[shipped]} / ${rate[off]}" | bc -l)" \
    "${rate[intx]}" "$(echo "${rate[intx]} / ${rate[off]}" | bc -l)"
done
exec 3>&-
