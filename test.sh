#!/usr/bin/env bash
# The one test command: ./test.sh
# Restores and builds everything with warnings as errors, starts what the tests need, runs every test project,
# stops what it started (even on failure), and ends with a line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"

configuration=Release
results="$(pwd)/artifacts/test-results"
rm -rf "$results"
mkdir -p "$results"
# Tests that measure something (the PostgreSQL fleet test) append a line here; it is printed at the end.
export JOBRUNNER_TEST_REPORT="$results/report.txt"

pids=()
stops=()
cleanup() {
  for stop in "${stops[@]}"; do
    eval "$stop" || true
  done
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

echo "== restore and build (warnings are errors)"
dotnet restore JobRunner.sln
dotnet build JobRunner.sln --no-restore -c "$configuration" -warnaserror -nologo

# Services the integration tests need: each script in eng/test-services/ is sourced here. It installs what it needs,
# starts its service on 127.0.0.1, exports the connection settings the tests read (JOBRUNNER_TEST_*), and appends the
# pid of what it started to "pids" (or a stop command to "stops") so that the trap above stops it, even on failure.
for service in eng/test-services/*.sh; do
  [ -e "$service" ] || continue
  echo "== start $(basename "$service" .sh)"
  # shellcheck source=/dev/null
  source "$service"
done

echo "== test"
status=0
for project in tests/*/*.csproj; do
  name="$(basename "$project" .csproj)"
  # A test that hangs fails after 15 minutes (with the name of the test in the blame output) instead of holding the run.
  if ! dotnet test "$project" --no-build -c "$configuration" --blame-hang-timeout 15m --blame-hang-dump-type none --logger "trx;LogFileName=$name.trx" --results-directory "$results"; then
    status=1
  fi
done

passed=0
failed=0
for trx in "$results"/*.trx; do
  [ -e "$trx" ] || continue
  counters="$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)"
  p="$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters")"
  f="$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")"
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
done

if [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ]; then
  status=1
fi

[ -s "$JOBRUNNER_TEST_REPORT" ] && cat "$JOBRUNNER_TEST_REPORT"
echo "$passed passed, $failed failed"
exit "$status"
