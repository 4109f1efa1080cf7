# shellcheck shell=bash
# Sourced by test.sh: installs the pinned SQS/S3 emulators (fauxqs, local-aws-sqs; versions in
# eng/test-services/aws/package-lock.json) into artifacts/test-services/aws, starts both on 127.0.0.1 on free ports, waits
# until they answer, exports the endpoints for tests/JobRunner.Aws.Tests and appends the launcher's pid to "pids".
#   JOBRUNNER_TEST_SQS            fauxqs (SQS JSON protocol), e.g. http://127.0.0.1:41234
#   JOBRUNNER_TEST_S3             fauxqs (S3, path-style), the same endpoint
#   JOBRUNNER_TEST_SQS_SECONDARY  local-aws-sqs (SQS JSON protocol)
# The emulators check no signature, but the client signs every request: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION
# are set to dummy values unless already set.

jobrunner_start_aws() {
  local root here dir out pid line i
  root="$(pwd)"
  here="$root/eng/test-services/aws"
  dir="$root/artifacts/test-services/aws"
  mkdir -p "$dir"
  if ! cmp -s "$here/package-lock.json" "$dir/package-lock.json" || [ ! -d "$dir/node_modules/fauxqs" ]; then
    cp "$here/package.json" "$here/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  cp "$here/launch.mjs" "$dir/launch.mjs"

  out="$dir/launch.out"
  : >"$out"
  node "$dir/launch.mjs" >"$out" 2>"$dir/launch.err" &
  pid=$!
  pids+=("$pid")

  line=""
  for i in $(seq 1 300); do
    line="$(grep -m1 '^fauxqs=' "$out" || true)"
    [ -n "$line" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "aws.sh: the emulator launcher exited:" >&2
      cat "$dir/launch.err" >&2
      return 1
    fi
    sleep 0.1
  done
  if [ -z "$line" ]; then
    echo "aws.sh: the emulators did not start within 30 s; see $dir/launch.err" >&2
    return 1
  fi

  local fauxqs_port sqs_port
  fauxqs_port="$(sed -n 's/^fauxqs=\([0-9]*\) .*/\1/p' <<<"$line")"
  sqs_port="$(sed -n 's/.* local-aws-sqs=\([0-9]*\)$/\1/p' <<<"$line")"
  for i in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$fauxqs_port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done

  export JOBRUNNER_TEST_SQS="http://127.0.0.1:$fauxqs_port"
  export JOBRUNNER_TEST_S3="http://127.0.0.1:$fauxqs_port"
  export JOBRUNNER_TEST_SQS_SECONDARY="http://127.0.0.1:$sqs_port"
  export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
  export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
  export AWS_REGION="${AWS_REGION:-us-east-1}"
  echo "aws: fauxqs on $JOBRUNNER_TEST_SQS, local-aws-sqs on $JOBRUNNER_TEST_SQS_SECONDARY (pid $pid)"
}

jobrunner_start_aws
