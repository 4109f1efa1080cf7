#!/usr/bin/env bash
# Runs the PostgreSQL end-to-end benchmark against a throwaway server (started and stopped here).
# Usage: benchmarks/postgres.sh [jobs] [batches in flight] [drain]   (defaults 50,000 and 1; "drain": baseline and durable drain only)
set -euo pipefail
cd "$(dirname "$0")/.."
pids=()
stops=()
cleanup() {
  for stop in "${stops[@]}"; do eval "$stop" || true; done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
source eng/test-services/postgres.sh
dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- postgres "${1:-50000}" "${2:-1}" ${3:-}
