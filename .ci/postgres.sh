#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the shared-storage tests; prints the
# SQLAlchemy URL. Installs Debian's postgresql when missing. Stop it with: .ci/postgres.sh stop DIR
set -euo pipefail
if [ "${1:-}" = stop ]; then
  bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
  as=(); [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$bin/pg_ctl" -D "$2/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$2"
  exit 0
fi
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
dir=$1
as=(); [ "$(id -u)" = 0 ] && { as=(runuser -u postgres --); chown postgres "$dir"; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -o "-h 127.0.0.1 -p $port -k $dir" -l "$dir/server.log" -w start >/dev/null
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
