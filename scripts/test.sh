#!/usr/bin/env bash
# Installs what the tests need from Debian's packages when missing, builds the
# binaries the end-to-end tests start, and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# program -> Debian package
declare -A needs=(
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [snmpd]=snmpd
  [snmptrap]=snmp
  [socat]=socat
  [victoria-metrics]=victoria-metrics
  [prometheus-alertmanager]=prometheus-alertmanager
  [aiosmtpd]=python3-aiosmtpd
  [openssl]=openssl
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [pdftotext]=poppler-utils
)
missing=()
for prog in "${!needs[@]}"; do
  if ! command -v "$prog" >/dev/null && [ ! -x "/usr/sbin/$prog" ]; then
    missing+=("${needs[$prog]}")
  fi
done
# PostgreSQL's server (Debian keeps it off PATH, under /usr/lib/postgresql/N/bin).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
# A Chinese font, so the browser tests' zh-CN screenshots show characters.
if ! { command -v fc-list >/dev/null && fc-list :lang=zh | grep -q .; }; then
  missing+=(fonts-wqy-microhei)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "==> installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "==> checking format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> building"
cargo build --workspace --bins --locked
echo "==> testing"
cargo test --workspace --locked
