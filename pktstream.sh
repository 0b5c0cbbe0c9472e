#!/usr/bin/env bash
# The README's two commands:
#   ./pktstream.sh produce [pktstream produce flags]   capture on the default-route interface into Kafka
#   ./pktstream.sh test    [pytest args]               the whole test suite (unit, kernel, Kafka, end to end)
# Both first run the idempotent set-up (scripts/setup.sh). Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "pktstream.sh: run as root (it installs packages and loads XDP programs)" >&2; exit 1; }
  exec sudo -E "$here/pktstream.sh" "$@"
fi
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  produce)
    "$here/scripts/setup.sh"
    exec "$here/.venv/bin/pktstream" produce "$@" ;;
  test)
    "$here/scripts/setup.sh"
    "$here/scripts/test-tools.sh"
    exec "$here/scripts/test.sh" "$@" ;;
  *)
    echo "usage: $0 produce [flags] | test [pytest args]" >&2; exit 2 ;;
esac
