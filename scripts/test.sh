#!/usr/bin/env bash
# The whole test suite: lint, types, then every test (unit, kernel, Kafka, end
# to end). Kernel and Kafka tests must run, not skip: PKTSTREAM_TEST_REQUIRE_ALL=1
# turns a missing prerequisite into a failure. The tests start their own
# Kafka broker unless PKTSTREAM_TEST_BOOTSTRAP names one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PKTSTREAM_VENV:-$PWD/.venv}
export PATH="$VENV/bin:$PATH"
export PKTSTREAM_TEST_REQUIRE_ALL=1
echo "== ruff"; ruff check bpf schemas runtime producer consumers tests bench scripts fuzz
echo "== mypy"; mypy -p pktstream.bpf -p pktstream.schemas -p pktstream.runtime -p pktstream.producer -p pktstream.consumers
run_pytest() {
  set +e
  python -m pytest "$@"
  local rc=$?
  set -e
  if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; return 1; fi
  return $rc
}
if [ $# -gt 0 ]; then
  echo "== pytest $*"
  run_pytest "$@"
  exit $?
fi
# The whole suite in two runs: the kernel and end-to-end tests one at a time (they share the broker,
# the namespaces and the CPUs they measure), then the unit tests on both CPUs (pytest-xdist: they
# are CPU-bound and share nothing).
# (the metrics server's unit tests time its answers: they run in the first run, alone)
echo "== pytest: kernel and end to end"
rc=0
run_pytest tests/e2e tests/kernel tests/unit/test_metrics_server.py || rc=$?
echo "== pytest: unit (2 workers, a file each)"
run_pytest tests/unit -n 2 --dist loadfile --ignore=tests/unit/test_metrics_server.py || rc=$((rc ? rc : $?))
exit $rc
