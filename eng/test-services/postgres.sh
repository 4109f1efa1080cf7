# Sourced by test.sh: starts a throwaway PostgreSQL server on a free 127.0.0.1 port for the integration tests.
# Exports JOBRUNNER_TEST_POSTGRES (the connection string) and JOBRUNNER_TEST_POSTGRES_RESTART (a shell command that
# restarts the server, for the fleet test). Stopped by test.sh's trap, even on failure.
# Also usable on its own: `source eng/test-services/postgres.sh` in a shell with `pids=(); stops=()`.

pg_bin=""
for candidate in "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent)")" /usr/lib/postgresql/*/bin; do
  if [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/initdb" ]; then
    pg_bin="$candidate"
    break
  fi
done
if [ -z "$pg_bin" ]; then
  echo "PostgreSQL server binaries not found: installing postgresql-15 with apt"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql-15 >/dev/null
  pg_bin=/usr/lib/postgresql/15/bin
fi

# The server refuses to run as root: run it as "postgres" when we are root.
pg_as() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)))"
pg_dir="$(mktemp -d /tmp/jobrunner-pg.XXXXXX)"
chmod 755 "$pg_dir"
[ "$(id -u)" -eq 0 ] && chown postgres "$pg_dir"
pg_as "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust --no-sync -E UTF8 >"$pg_dir/initdb.log" 2>&1 \
  || { cat "$pg_dir/initdb.log"; return 1; }
pg_options="-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB"
pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -o "$pg_options" -l "$pg_dir/server.log" -w -t 60 start >/dev/null \
  || { cat "$pg_dir/server.log"; return 1; }
stops+=("$(declare -f pg_as); pg_as '$pg_bin/pg_ctl' -D '$pg_dir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$pg_dir'")

export JOBRUNNER_TEST_POSTGRES="Host=127.0.0.1;Port=$pg_port;Username=postgres;Database=postgres"
# The restart script closes every inherited descriptor above stderr first, so that the restarted server holds none of
# its caller's (a lock file, a test runner's pipe).
pg_run_as=""
[ "$(id -u)" -eq 0 ] && pg_run_as="runuser -u postgres --"
cat >"$pg_dir/restart.sh" <<RESTART
#!/usr/bin/env bash
for fd in \$(ls /proc/\$\$/fd); do [ "\$fd" -gt 2 ] && eval "exec \$fd>&-" 2>/dev/null; done
exec $pg_run_as '$pg_bin/pg_ctl' -D '$pg_dir/data' -o '$pg_options' -l '$pg_dir/server.log' -m fast -w -t 60 restart
RESTART
chmod 755 "$pg_dir/restart.sh"
export JOBRUNNER_TEST_POSTGRES_RESTART="bash $pg_dir/restart.sh"
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port ($pg_dir)"
