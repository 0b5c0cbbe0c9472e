#!/usr/bin/env bash
# The long fuzz campaign: every target of fuzz/ in turn (one process at a time, one core), each for
# the given seconds (default 300), from the committed seeds (fuzz/corpus) plus a working corpus kept
# between runs. Prints per target the executions, coverage (libFuzzer's cov: edges and ft:
# features), corpus size, peak RSS and what it found; the inputs that crashed and the logs are kept
# under the directory it names. Needs clang and atheris (scripts/test-tools.sh, the [test] extras).
#   scripts/fuzz.sh [seconds-per-target] [python -m fuzz.campaign options, e.g. --targets decode,parse]
# Exit code: 0 nothing found, 1 findings, 2 tools missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PKTSTREAM_VENV:-$PWD/.venv}
seconds=300
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
exec "$VENV/bin/python" -m fuzz.campaign --seconds "$seconds" "$@"
