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
echo "== pytest"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
