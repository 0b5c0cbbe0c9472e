#!/usr/bin/env bash
# Tools only the test suite needs, beyond scripts/setup.sh: Debian's prometheus (the RED metrics
# test scrapes pktstream usage with it; the package's own service is not started), Debian's clang
# with libFuzzer and the ASan/UBSan runtimes (the fuzz targets in fuzz/, tests/unit/test_fuzz.py;
# atheris itself comes with the [test] extras, a wheel that needs no compiler), and helm, for
# the chart in deploy/helm (tests/unit/test_deploy.py renders it), built from the Go module proxy
# once, cached under ~/.cache/pktstream/bin. Idempotent.
set -euo pipefail
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"  # go and the cache need one
say() { printf '[test-tools] %s\n' "$*" >&2; }
if ! command -v prometheus >/dev/null; then
  say "installing Debian's prometheus (the server only; its service stays stopped)"
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then  # no service starts while the package installs
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
           --no-install-recommends prometheus >/dev/null; }
  [ "$made_policy" = 0 ] || rm -f "$policy"
fi
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
           --no-install-recommends "$@" >/dev/null; }
}
# libFuzzer's static runtime: clang prints the bare name when it does not have the file
fuzzer_rt() { clang -print-file-name="libclang_rt.fuzzer-$(uname -m).a" 2>/dev/null; }
if ! command -v clang >/dev/null || [ ! -e "$(fuzzer_rt)" ]; then
  say "installing Debian's clang with its libFuzzer and sanitizer runtimes"
  command -v clang >/dev/null || apt_install clang
  # the runtimes are a package of their own (libclang-rt-<version>-dev), a recommendation that
  # --no-install-recommends leaves out
  ver=$(clang -dumpversion | cut -d. -f1)
  [ -e "$(fuzzer_rt)" ] || apt_install "libclang-rt-$ver-dev" || apt_install libclang-rt-dev || true
  [ -e "$(fuzzer_rt)" ] || { say "clang $ver has no libFuzzer runtime; the fuzz tests will fail"; exit 1; }
fi
HELM_VERSION=v3.22.0
bin="${XDG_CACHE_HOME:-$HOME/.cache}/pktstream/bin"
# (a helm built by go install reports its version without the patch level: a stamp file says it)
if [ -x "$bin/helm" ] && [ "$(cat "$bin/helm.version" 2>/dev/null)" = "$HELM_VERSION" ]; then
  exit 0
fi
go=$(command -v go || true)
[ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go
if [ -z "$go" ]; then
  say "no Go toolchain: installing Debian's golang-go"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go >/dev/null
  go=$(command -v go)
fi
mkdir -p "$bin"
say "building helm $HELM_VERSION into $bin (go install, a few minutes the first time)"
if ! GOBIN="$bin" "$go" install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >"$bin/helm-build.log" 2>&1; then
  cat "$bin/helm-build.log" >&2
  say "helm could not be built; the chart tests will fail"
  exit 1
fi
echo "$HELM_VERSION" > "$bin/helm.version"
say "ready: $bin/helm ($HELM_VERSION)"
