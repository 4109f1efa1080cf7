#!/usr/bin/env bash
# Runs the PostgreSQL end-to-end benchmark against a throwaway server (started and stopped here).
# Usage: benchmarks/postgres.sh [jobs] [batches in flight] [drain]   (defaults 50,000 and 1; "drain": baseline and durable drain only)
#        benchmarks/postgres.sh [rounds] 1 latency                   (idle enqueue -> start only: rounds of 1,000 samples)
#        benchmarks/postgres.sh fairness [flood jobs]                 (tenant fairness through the queue; default 20,000)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/throwaway-postgres.sh
if [ "${1:-}" = fairness ]; then
  dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- postgres-fairness "${2:-20000}"
else
  dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- postgres "${1:-50000}" "${2:-1}" ${3:-}
fi
