#!/usr/bin/env bash
# Idempotent set-up for pktstream on Debian/Ubuntu, run as root by both of the
# README's commands: system packages, a kernel build directory for bcc, a
# virtual environment that can import the system's bcc, the Python packages.
# The Kafka jars are resolved from Maven Central by `pktstream kafka up`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${PKTSTREAM_VENV:-$ROOT/.venv}
say() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "must run as root (it installs packages and loads BPF programs)"; exit 1
fi

arch=$(dpkg --print-architecture)
# bcc (Python bindings and library); gcc builds the compiled loops (*.c); Java (with keytool) and Maven
# run the local Kafka broker; iproute2, libcap2-bin (capsh) tcpdump and openssl (a TLS server's certificate) serve the
# tests, systemd's systemd-analyze checks the units in deploy/systemd, and tshark (with capinfos) reads
# the capture files `pktstream export` writes.
pkgs=(python3 python3-venv python3-bpfcc libbpfcc iproute2 libcap2-bin gcc libc6-dev
      default-jre-headless maven tcpdump openssl ca-certificates systemd tshark)
kver=$(uname -r)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
need_headers=0
[ -e "/lib/modules/$kver/build/include" ] || need_headers=1
if [ ${#missing[@]} -gt 0 ] || [ $need_headers -eq 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  say "installing: ${missing[*]:-} (kernel headers: $need_headers)"
  apt-get update -q >/dev/null
  [ ${#missing[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  if [ $need_headers -eq 1 ]; then
    # Headers of the running kernel if the distribution has them, else its
    # generic ones: XDP programs use only UAPI headers, stable across versions.
    apt-get install -y -q --no-install-recommends "linux-headers-$kver" >/dev/null 2>&1 \
      || apt-get install -y -q --no-install-recommends "linux-headers-$arch" >/dev/null 2>&1 \
      || apt-get install -y -q --no-install-recommends linux-headers-generic >/dev/null
  fi
fi

if [ ! -e "/lib/modules/$kver/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-"$arch" /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$hdr" ] || { say "no kernel headers found under /usr/src"; exit 1; }
  common=${hdr%-"$arch"}-common
  [ -d "$common" ] || common=$hdr
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$hdr" "/lib/modules/$kver/build"
  ln -sfn "$common" "/lib/modules/$kver/source"
  say "linked /lib/modules/$kver/build -> $hdr (source -> $common)"
fi

# bpffs, where the producer pins its counters so that a killed run can be accounted for
# (systemd mounts it on most hosts; containers and minimal systems may not)
if [ -d /sys/fs/bpf ] && ! grep -qs " /sys/fs/bpf bpf " /proc/mounts; then
  mount -t bpf bpf /sys/fs/bpf && say "mounted bpffs on /sys/fs/bpf"
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then PY=/usr/bin/python3; fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# bcc is not on PyPI; its Python module is pure Python over libbcc, so link
# Debian's copy into the venv instead of exposing all system packages.
bcc_dir=$(ls -d /usr/lib/python3/dist-packages/bcc 2>/dev/null || true)
[ -n "$bcc_dir" ] || { say "python3-bpfcc did not install its bcc module"; exit 1; }
ln -sfn "$bcc_dir" "$site/bcc"

stamp="$VENV/.pktstream-installed"
want=$(cat pyproject.toml $(find schemas runtime producer consumers -name '*.c' | sort); find bpf schemas runtime producer consumers -name '*.py' | sort)
want=$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing pktstream and its Python dependencies into $VENV"
  # strict editable mode: a tree of links that mypy and setuptools both follow
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -e ".[test]" --config-settings editable_mode=strict; } \
       >"$VENV/pip.log" 2>&1; then
    cat "$VENV/pip.log" >&2; say "pip install failed"; exit 1
  fi
  echo "$want" > "$stamp"
fi
say "ready: $VENV/bin/pktstream"
