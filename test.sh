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

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

echo "== restore and build (warnings are errors)"
dotnet restore JobRunner.sln
dotnet build JobRunner.sln --no-restore -c "$configuration" -warnaserror -nologo

# Services the integration tests need are started here (none yet: PostgreSQL and the AWS emulators come with their
# packages). Each one records its pid in "pids" so that the trap above stops it.

echo "== test"
status=0
for project in tests/*/*.csproj; do
  name="$(basename "$project" .csproj)"
  if ! dotnet test "$project" --no-build -c "$configuration" --logger "trx;LogFileName=$name.trx" --results-directory "$results"; then
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

echo "$passed passed, $failed failed"
exit "$status"
