#!/usr/bin/env bash
# RoomGuard demo: builds the workspace, then starts a simulated site (three
# rooms of Modbus devices), the collector with its embedded MQTT broker and
# SQLite store, and an agent polling the site. Live values at
# http://127.0.0.1:8080. Type a scenario name and Enter to run a drill:
#   normal | ac_failure | thermal_runaway | mains_failure | smoke | … (docs/SIMULATOR.md)
# Ctrl-C stops everything. Logs and data go to var/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust from https://rustup.rs first" >&2
  exit 1
fi
echo "==> building (the first build takes a few minutes)"
cargo build --workspace --bins

mkdir -p var/demo
# Where cargo put the binaries (CARGO_TARGET_DIR moves them).
bin="${CARGO_TARGET_DIR:-target}/debug"
pids=()
cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_ready() { # file, what
  for _ in $(seq 1 100); do
    grep -q '"event":"ready"' "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start; see var/demo/$2.log" >&2
  exit 1
}

"$bin/roomguard-collector" run configs/demo/collector.toml >var/demo/collector.out 2>var/demo/collector.log &
pids+=($!)
wait_ready var/demo/collector.out collector

# The simulator reads drill scenario names from a FIFO fed by this terminal.
rm -f var/demo/sim.in && mkfifo var/demo/sim.in
"$bin/roomguard-sim" --modbus 127.0.0.1:5020 --control 127.0.0.1:5080 \
  <var/demo/sim.in >var/demo/sim.out 2>var/demo/sim.log &
pids+=($!)
exec 3>var/demo/sim.in
wait_ready var/demo/sim.out sim

"$bin/roomguard-agent" run configs/demo/agent.toml >var/demo/agent.out 2>var/demo/agent.log &
pids+=($!)

cat <<MSG

RoomGuard demo is running.
  dashboard     http://127.0.0.1:8080   (admin / roomguard-demo)
  latest API    http://127.0.0.1:8080/api/v1/latest
  metrics       http://127.0.0.1:8080/metrics
  logs          var/demo/*.log

Type a scenario and press Enter to run a drill: ac_failure, thermal_runaway,
mains_failure, smoke, phase_unbalance, gas_leak, co_rise, earth_leakage,
insulation_fault, door_open, ventilation_failure, ats_transfer, battery_test.
Each is declared as a drill in the collector (its alarms are marked as drill
alarms and kept out of the real counts of reports); normal ends it.
Ctrl-C stops the demo.
MSG
# Drills are declared in the collector, so the alarms they raise are marked
# as drill alarms and kept out of the real counts of reports. Bash's own
# /dev/tcp, so the demo needs no curl. `api PATH BODY` prints the response.
api() {
  exec 4<>/dev/tcp/127.0.0.1/8080 || return 1
  printf 'POST %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer demo-drills-token-0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$1" "${#2}" "$2" >&4
  cat <&4
  exec 4<&-
}
drill=""
end_drill() {
  [ -n "$drill" ] || return 0
  api "/api/v1/drills/$drill/end" "" | head -n 1 | grep -q ' 200 ' \
    && echo "drill $drill ended" || echo "drill $drill not ended (see var/demo/collector.log)"
  drill=""
}
declare_drill() { # scenario, room ("" = the whole site)
  local body="{\"site\":\"demo-site\",\"room\":\"$2\",\"scenario\":\"$1\",\"note\":\"typed in the demo terminal\"}"
  local reply
  reply=$(api /api/v1/drills "$body") || true
  drill=$(printf '%s' "$reply" | grep -o '"id":[0-9]*' | head -n 1 | cut -d: -f2)
  if [ -n "$drill" ]; then
    echo "drill $drill declared in ${2:-the whole site} for 30 minutes (type normal to end it)"
  else
    echo "drill not declared (see var/demo/collector.log)"
  fi
}
# The room each scenario's drill takes place in (docs/SIMULATOR.md).
room_of() {
  case "$1" in
    ac_failure|smoke) echo machine-room ;;
    thermal_runaway|co_rise|insulation_fault|door_open|ventilation_failure) echo battery-room ;;
    phase_unbalance|gas_leak|earth_leakage|ats_transfer|battery_test) echo distribution-room ;;
    mains_failure) echo "" ;;
    *) return 1 ;;
  esac
}
while IFS= read -r line; do
  line="${line//[[:space:]]/}"
  [ -n "$line" ] || continue
  if [ "$line" = normal ]; then
    echo "$line" >&3
    echo "scenario -> normal"
    end_drill
  elif room=$(room_of "$line"); then
    # Declared before it starts, so its first alarm is already the drill's.
    end_drill
    declare_drill "$line" "$room"
    echo "$line" >&3
    echo "scenario -> $line"
  else
    echo "unknown scenario \"$line\"; one of: normal, ac_failure, thermal_runaway, mains_failure, smoke,"
    echo "  phase_unbalance, gas_leak, co_rise, earth_leakage, insulation_fault, door_open,"
    echo "  ventilation_failure, ats_transfer, battery_test"
  fi
done
# stdin closed (not a terminal): keep running until interrupted.
wait
