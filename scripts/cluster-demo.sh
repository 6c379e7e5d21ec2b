#!/usr/bin/env bash
# RoomGuard cluster demo (docs/SCALING.md): a PostgreSQL and a Mosquitto of
# their own, three collectors sharing the sites through leases, and one
# simulator process playing twelve small sites (site-1 … site-12) with two
# real agents each (`roomguard-sim fleet`, docs/SIMULATOR.md).
# Type below to act on it:
#   kill n2    SIGKILL node n2: its sites move to the others within ~15 s
#   stop n2    stop it cleanly: its sites move at once
#   start n2   start it again: it takes its share back
#   status     who holds which partition and site
#   site-3 smoke | site-3 normal | …   a drill at one site
# Ctrl-C stops everything. Logs and data go to var/cluster-demo/.
# Needs Debian's postgresql and mosquitto packages.
set -euo pipefail
cd "$(dirname "$0")/.."

initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
mosquitto=$(command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null || true)
if [ -z "$initdb" ] || [ -z "$mosquitto" ]; then
  echo "needs PostgreSQL and Mosquitto: apt-get install postgresql mosquitto" >&2
  exit 1
fi
pgbin=$(dirname "$initdb")
echo "==> building (the first build takes a few minutes)"
cargo build --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/debug"

out=var/cluster-demo
rm -rf "$out" && mkdir -p "$out"
# PostgreSQL refuses to run as root: as root the cluster belongs to the
# `postgres` user, in a directory it can reach.
pgdir=$(mktemp -d /tmp/roomguard-cluster-demo-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$pgdir"
  as_pg=(runuser -u postgres --)
fi
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}" $(cat "$out"/n*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  # The collectors write what they queued before PostgreSQL goes.
  wait 2>/dev/null || true
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$pgdir"
}
trap cleanup EXIT INT TERM

echo "==> PostgreSQL on 127.0.0.1:55432"
"${as_pg[@]}" "$initdb" -D "$pgdir/data" -U postgres --auth=trust >"$out/initdb.log"
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w \
  -o "-p 55432 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pgdir" start >/dev/null
"${as_pg[@]}" "$pgbin/psql" -h 127.0.0.1 -p 55432 -U postgres -q -c "CREATE DATABASE roomguard"

echo "==> Mosquitto on 127.0.0.1:11884"
printf 'listener 11884 127.0.0.1\nallow_anonymous true\n' >"$out/mosquitto.conf"
"$mosquitto" -c "$out/mosquitto.conf" >"$out/mosquitto.log" 2>&1 &
pids+=($!)

secret="demo-agent-secret-not-for-production-0123456789"
for i in 1 2 3; do
  cat >"$out/n$i.toml" <<TOML
[http]
listen = "127.0.0.1:808$i"
[mqtt]
url = "mqtt://127.0.0.1:11884"
[store]
backend = "postgres"
url = "postgresql://postgres@127.0.0.1:55432/roomguard"
[agents]
secret = { value = "$secret" }
[auth]
initial_admin_password = { value = "roomguard-demo" }
[cluster]
enabled = true
node_id = "n$i"
partitions = 16
TOML
done

start_node() { # n1 | n2 | n3
  "$bin/roomguard-collector" run "$out/$1.toml" >>"$out/$1.out" 2>>"$out/$1.log" &
  echo $! >"$out/$1.pid"
}
for n in n1 n2 n3; do start_node "$n"; done
for n in n1 n2 n3; do
  for _ in $(seq 1 100); do grep -q '"event":"ready"' "$out/$n.out" 2>/dev/null && break; sleep 0.1; done
done

# Twelve sites with two agents each, in one process; each agent signs with
# the key derived from the collectors' [agents] secret.
printf '%s' "$secret" >"$out/agent-secret"
rm -f "$out/sim.in" && mkfifo "$out/sim.in"
"$bin/roomguard-sim" fleet --sites 12 --agents 2 --broker mqtt://127.0.0.1:11884 \
  --agent-secret-file "$out/agent-secret" --state-dir "$out/fleet" --control 127.0.0.1:5081 \
  <"$out/sim.in" >"$out/sim.out" 2>"$out/sim.log" &
pids+=($!)
exec 3>"$out/sim.in"

status() {
  # What /api/v1/cluster shows (that needs an admin's login), read from
  # the database directly.
  "${as_pg[@]}" "$pgbin/psql" -h 127.0.0.1 -p 55432 -U postgres -d roomguard -q -c \
    "SELECT l.owner AS node, count(DISTINCT l.part) FILTER (WHERE l.part >= 0) AS partitions,
            string_agg(DISTINCT s.site, ' ') AS sites, bool_or(l.part = -1) AS maintenance
       FROM cluster_leases l LEFT JOIN cluster_sites s ON s.part = l.part
      WHERE l.expires_at > now() GROUP BY l.owner ORDER BY 1"
}

cat <<MSG

RoomGuard cluster demo is running: three collectors on one PostgreSQL.
  nodes        http://127.0.0.1:8081  :8082  :8083   (admin / roomguard-demo, any node)
  cluster API  http://127.0.0.1:8081/api/v1/cluster  (log in first; admins only)
  logs         $out/*.log

Type: kill n2 | stop n2 | start n2 | status | a drill at one site: site-3 smoke, site-3 normal,
      site-7 mains_failure, … (http://127.0.0.1:5081/sites lists the sites and their drills)
Ctrl-C stops everything.
MSG
while read -r cmd node; do
  case "$cmd" in
    kill|stop)
      sig=TERM; [ "$cmd" = kill ] && sig=KILL
      if [ -f "$out/$node.pid" ] && kill -$sig "$(cat "$out/$node.pid")" 2>/dev/null; then
        echo "$node: SIG$sig sent; 'status' shows its sites moving"
        rm -f "$out/$node.pid"
      else
        echo "$node is not running (n1, n2 or n3)"
      fi ;;
    start)
      if [ -f "$out/$node.toml" ] && [ ! -f "$out/$node.pid" ]; then start_node "$node"; echo "$node started"
      else echo "$node: unknown or already running"; fi ;;
    status) status ;;
    "") ;;
    site-[1-9]|site-1[0-2])
      echo "$cmd $node" >&3; echo "$cmd: scenario -> $node (see $out/sim.log)" ;;
    site-*) echo "no $cmd: the sites are site-1 … site-12" ;;
    *) echo "unknown: $cmd (kill, stop, start, status, or SITE SCENARIO)" ;;
  esac
done
