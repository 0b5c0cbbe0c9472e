"""Build the fuzz targets and run them one after the other, each for a bounded time.

    python -m fuzz.campaign [--seconds 300] [--targets decode,parse] [--out DIR] [--corpus DIR]
    python -m fuzz.campaign --reproduce FILE --targets container     # one input, with its stack

C targets are libFuzzer binaries (clang -fsanitize=fuzzer,address,undefined) that include the
project's C file they test. Python targets run under atheris over a build of the same C sources
with ASan and UBSan (PKTSTREAM_NATIVE_LIB), libFuzzer and ASan preloaded as one library merged
from clang's runtimes (as atheris' own build does it), so that the C loops report to the same
fuzzer. One process at a time, one core.

Each run starts from the committed seeds (fuzz/corpus/<target>, read only) and a working corpus
that persists between runs (--corpus); what a run finds (crash-*, oom-*, timeout-*, leak-*) is
kept under --out/<target>/ with its log.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
SEEDS = FUZZ / "corpus"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pktstream" / "fuzz"
SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
FINDING_PREFIXES = ("crash-", "oom-", "timeout-", "leak-")
# One allocation larger than this is a finding: the largest message a producer writes (64 MiB of
# records, 256 payload bytes each) needs 55 MiB for its biggest column matrix
MALLOC_LIMIT_MB = 512


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "c": fuzz/c/fuzz_<name>.c; "py": targets.TARGETS[name] under atheris
    what: str
    dicts: tuple[str, ...]


TARGETS = [
    Target("decode", "c", "pkt_avro_decode (schemas/_codec.c)", ("avro.dict",)),
    Target("parse", "c", "pkt_parse_payloads, pkt_attack_suspects (consumers/engine/_parse.c)", ("http.dict",)),
    Target("redact", "c", "pkt_redact (producer/_redact.c)", ("http.dict",)),
    Target("container", "py", "read_container (schemas/columns.py)", ("avro.dict",)),
    Target("features", "py", "featurize, route, repartition encoding (consumers/engine/features.py)",
           ("avro.dict", "http.dict")),
    Target("relayed", "py", "pktstream relay's messages read (engine/wirein.py, columns.read_relayed)",
           ("avro.dict",)),
    Target("snapshot", "py", "a state topic's partition read back (engine/snapshot.py: Chain, manifests, unpack)",
           ("snapshot.dict",)),
    Target("payloads", "py", "parse.py, attacks.py prefilter and scan, privacy.redact", ("http.dict",)),
]
BY_NAME = {t.name: t for t in TARGETS}


class ToolMissing(RuntimeError):
    pass


def _clang_file(name: str) -> Path | None:
    clang = shutil.which("clang")
    if clang is None:
        return None
    out = subprocess.run([clang, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return Path(out) if os.path.isabs(out) and Path(out).exists() else None


def missing_tools(kinds: set[str] | None = None) -> list[str]:
    """What this machine lacks for the targets of these kinds (scripts/test-tools.sh installs it)."""
    kinds = kinds or {"c", "py"}
    out = []
    if shutil.which("clang") is None:
        out.append("clang (Debian's clang)")
    else:
        for lib in ("libclang_rt.fuzzer-x86_64.a", "libclang_rt.fuzzer_no_main-x86_64.a", "libclang_rt.asan-x86_64.a"):
            if _clang_file(lib) is None:
                out.append(f"{lib} (Debian's libclang-rt-<version>-dev)")
    if "py" in kinds and importlib.util.find_spec("atheris") is None:
        out.append("atheris (PyPI; in pktstream's [test] extras)")
    return out


@dataclass
class Build:
    dir: Path
    binaries: dict[str, Path] = field(default_factory=dict)  # C target -> libFuzzer binary
    native: Path | None = None  # the C loops with the sanitizers, for the Python targets
    preload: Path | None = None  # libFuzzer + ASan runtime, one library
    dicts: dict[str, Path] = field(default_factory=dict)


def _run(cmd: list[str], **kw: object) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{p.stdout}{p.stderr}")


def native_sources() -> list[Path]:
    """The C files of the compiled loops, as pyproject.toml builds them into pktstream.runtime._native."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        ext = tomllib.load(fh)["tool"]["setuptools"]["ext-modules"]
    return [ROOT / s for m in ext for s in m["sources"]]


def packet_layout_header() -> str:
    """packet_layout.h: the packet schema's field kinds and fixed sizes in writer order, as
    read_container resolves the schema a producer embeds (one source: columns.py itself)."""
    from pktstream.schemas import columns, load_schema_json
    from pktstream.schemas.container import embedded_schema

    lay = columns._layout(embedded_schema(load_schema_json("packet")))
    specs, kinds = lay.specs, lay.kinds
    ks = ", ".join(str(int(k)) for k in kinds)
    sizes = ", ".join(str(s.size if s.kind == "fixed" else 0) for s in specs)
    names = " ".join(s.name for s in specs)
    return (f"/* generated by fuzz/campaign.py from schemas/packet.avsc: {names} */\n"
            f"#define PACKET_NFIELDS {len(specs)}\n"
            f"static const int64_t PACKET_KIND[PACKET_NFIELDS] = {{ {ks} }};\n"
            f"static const int64_t PACKET_SIZE[PACKET_NFIELDS] = {{ {sizes} }};\n")


def build(out: Path, targets: list[Target]) -> Build:
    """Compile what the targets need into out (a fresh build of the current sources)."""
    kinds = {t.kind for t in targets}
    missing = missing_tools(kinds)
    if missing:
        raise ToolMissing("missing: " + "; ".join(missing))
    out.mkdir(parents=True, exist_ok=True)
    b = Build(out)
    (out / "packet_layout.h").write_text(packet_layout_header())
    for t in targets:
        d = out / f"{t.name}.dict"
        d.write_text("".join((FUZZ / "dict" / name).read_text() for name in t.dicts))
        b.dicts[t.name] = d
        if t.kind == "c":
            exe = out / f"fuzz_{t.name}"
            _run(["clang", *SANITIZE, "-fsanitize=fuzzer", "-Wall", "-I", str(out), "-o", str(exe),
                  str(FUZZ / "c" / f"fuzz_{t.name}.c")])
            b.binaries[t.name] = exe
    if "py" in kinds:
        b.native = out / "native_sanitized.so"
        _run(["clang", *SANITIZE, "-fsanitize=fuzzer-no-link", "-shared", "-fPIC", "-o", str(b.native),
              *map(str, native_sources())])
        b.preload = out / "asan_with_fuzzer.so"
        fuzzer, asan = _clang_file("libclang_rt.fuzzer_no_main-x86_64.a"), _clang_file("libclang_rt.asan-x86_64.a")
        assert fuzzer and asan
        # ASan's runtime without its preinit object (a shared library may not have .preinit_array),
        # with libFuzzer (no main: atheris drives it) whole in the same library
        asan_copy = out / "asan.a"
        shutil.copy(asan, asan_copy)
        _run(["ar", "d", str(asan_copy), "asan_preinit.cpp.o", "asan_preinit.cc.o"])
        _run(["clang++", "-shared", "-o", str(b.preload), "-Wl,--whole-archive", str(fuzzer), str(asan_copy),
              "-Wl,--no-whole-archive", "-lpthread", "-ldl"])
        asan_copy.unlink()
    return b


@dataclass
class Result:
    target: str
    seconds: int
    returncode: int
    executions: int = 0
    coverage: int = 0  # libFuzzer's cov: edges (Python targets: Python and C together)
    features: int = 0  # ft:
    corpus: int = 0
    peak_rss_mb: int = 0
    findings: list[Path] = field(default_factory=list)
    summary: str = ""  # the first line of the report of what went wrong
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings


_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.M)
_REPORT = re.compile(r"^(==\d+==ERROR: .*|.*runtime error: .*|fuzz check failed.*|=== Uncaught Python exception.*|"
                     r"\S*(Error|Exception)\b.*|.*out-of-memory.*|.*ALARM: working on the last Unit.*)$", re.M)


def command(t: Target, b: Build, args: list[str]) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if t.kind == "c":
        return [str(b.binaries[t.name]), *args], env
    assert b.native and b.preload
    env.update({
        "PKTSTREAM_NATIVE_LIB": str(b.native),
        "LD_PRELOAD": str(b.preload),
        # CPython's own allocations are never freed at exit; leaks are not what is looked for here
        "ASAN_OPTIONS": "detect_leaks=0:" + env.get("ASAN_OPTIONS", ""),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    })
    return [sys.executable, "-m", "fuzz.run_atheris", t.name, *args], env


def run(t: Target, b: Build, seconds: int, out: Path, corpus: Path, rss_limit_mb: int = 2048,
        timeout_s: int = 10, malloc_limit_mb: int = MALLOC_LIMIT_MB) -> Result:
    """Fuzz one target for about ``seconds`` (one process); findings and the log under out/."""
    out.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS / t.name
    args = [f"-max_total_time={seconds}", f"-rss_limit_mb={rss_limit_mb}", f"-malloc_limit_mb={malloc_limit_mb}",
            f"-timeout={timeout_s}",
            "-print_final_stats=1", f"-artifact_prefix={out}/", f"-dict={b.dicts[t.name]}", str(corpus)]
    if seeds.is_dir():
        args.append(str(seeds))  # read only: libFuzzer adds new inputs to the first directory
    cmd, env = command(t, b, args)
    log = out / "fuzz.log"
    with open(log, "w") as fh:
        rc = _run_alone(cmd, env, seconds + 300, stdout=fh, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    r = Result(t.name, seconds, rc, log=log)
    status = _STATUS.findall(text)
    if status:
        r.executions, r.coverage, r.features, r.corpus = map(int, status[-1])
    m = re.search(r"stat::number_of_executed_units:\s+(\d+)", text)
    if m:
        r.executions = int(m.group(1))
    m = re.search(r"stat::peak_rss_mb:\s+(\d+)", text)
    if m:
        r.peak_rss_mb = int(m.group(1))
    r.findings = sorted(p for p in out.iterdir() if p.name.startswith(FINDING_PREFIXES))
    if not r.ok:
        m = _REPORT.search(text)
        r.summary = m.group(0).strip() if m else f"exit code {rc}"
    return r


def _run_alone(cmd: list[str], env: dict[str, str], timeout_s: float, **kw: Any) -> int:
    """Run a target in a process group of its own, and end the group when it is done: ASan's
    llvm-symbolizer outlives a target that died of a report."""
    # through a shell that forks it: libFuzzer's -rss_limit_mb reads the process's peak RSS, which a
    # process spawned straight from this one inherits (Linux keeps ru_maxrss across exec); a test run
    # whose Python process had grown past 2 GB made every target report out-of-memory at once
    cmd = ["/bin/sh", "-c", '"$0" "$@"; exit $?', *cmd]
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, **kw)
    try:
        rc = p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        rc = -1
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return rc


def reproduce(t: Target, b: Build, path: Path) -> int:
    """Run one input through the target (its report on stderr); the target's exit code."""
    cmd, env = command(t, b, ["-rss_limit_mb=2048", f"-malloc_limit_mb={MALLOC_LIMIT_MB}", str(path)])
    return _run_alone(cmd, env, 600)


def table(results: list[Result]) -> str:
    head = f"{'target':<10} {'seconds':>7} {'executions':>11} {'exec/s':>7} {'cov':>6} {'ft':>7} {'corpus':>6} " \
           f"{'rss MB':>6}  findings"
    lines = [head]
    for r in results:
        found = "none" if r.ok else f"{len(r.findings)}: {r.summary}"
        lines.append(f"{r.target:<10} {r.seconds:>7} {r.executions:>11} {r.executions // max(r.seconds, 1):>7} "
                     f"{r.coverage:>6} {r.features:>7} {r.corpus:>6} {r.peak_rss_mb:>6}  {found}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.campaign", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=300, help="per target (default 300)")
    ap.add_argument("--targets", default=",".join(BY_NAME), help=f"comma-separated, of {', '.join(BY_NAME)}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    ap.add_argument("--out", type=Path, default=CACHE / "runs" / stamp, help="findings and logs (default %(default)s)")
    ap.add_argument("--corpus", type=Path, default=CACHE / "corpus",
                    help="working corpus kept between runs, one directory per target (default %(default)s)")
    ap.add_argument("--rss-limit-mb", type=int, default=2048)
    ap.add_argument("--malloc-limit-mb", type=int, default=MALLOC_LIMIT_MB, help="one allocation (default %(default)s)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    ap.add_argument("--reproduce", type=Path, help="run this one input through the (single) target")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown targets {unknown}")
    targets = [BY_NAME[n] for n in names]
    with tempfile.TemporaryDirectory(prefix="pktstream-fuzz-build-") as tmp:
        try:
            b = build(Path(tmp), targets)
        except ToolMissing as e:
            print(f"fuzz: {e} (scripts/test-tools.sh installs them)", file=sys.stderr)
            return 2
        if a.reproduce:
            if len(targets) != 1:
                ap.error("--reproduce needs one --targets")
            return reproduce(targets[0], b, a.reproduce)
        print(f"fuzz: {len(targets)} targets, {a.seconds} s each; findings and logs under {a.out}", flush=True)
        results = []
        for t in targets:
            print(f"fuzz: {t.name}: {t.what} ...", flush=True)
            r = run(t, b, a.seconds, a.out / t.name, a.corpus / t.name, a.rss_limit_mb, a.timeout, a.malloc_limit_mb)
            results.append(r)
            print(table([r]).splitlines()[1], flush=True)
            for p in r.findings:
                print(f"    kept: {p}", flush=True)
    print(table(results))
    if a.json:
        print(json.dumps([{**{k: v for k, v in vars(r).items() if k not in ("findings", "log")},
                           "findings": [str(p) for p in r.findings]} for r in results], indent=1))
    found = [r for r in results if not r.ok]
    print(f"fuzz: {'no findings' if not found else f'findings in {len(found)} targets'}; logs and inputs in {a.out}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
