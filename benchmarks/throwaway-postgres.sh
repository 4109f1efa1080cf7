# Sourced by the PostgreSQL benchmark scripts, from the repository root: starts a throwaway PostgreSQL server
# (eng/test-services/postgres.sh) and, when the script exits, stops it and runs whatever else the script added to
# stops (commands) and pids (processes to kill).
pids=()
stops=()
cleanup() {
  for stop in "${stops[@]}"; do eval "$stop" || true; done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
source eng/test-services/postgres.sh

# For scripts that talk to the server with psql: a scratch directory ($work, removed at exit), psql pointed at the
# server, q (psql that stops at the first error), and schema bench created by the shipped migrations.
bench_schema() {
  work="$(mktemp -d)"
  stops+=("rm -rf '$work'")
  export PGHOST=127.0.0.1 PGPORT="$pg_port" PGUSER=postgres PGDATABASE=postgres
  q -c "CREATE SCHEMA bench"
  for script in src/JobRunner.Storage.Postgres/Migrations/*.sql; do
    sed 's/{schema}/bench/g' "$script" | q
  done
}

q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
