"""Run one Python fuzz target under atheris: ``python -m fuzz.run_atheris TARGET [libFuzzer args]``
(``campaign.py`` sets the environment: the sanitizer build of the C loops in PKTSTREAM_NATIVE_LIB,
libFuzzer and ASan preloaded). pktstream's modules are instrumented for coverage as they are
imported; the C loops are instrumented by their build (-fsanitize=fuzzer-no-link)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m fuzz.run_atheris TARGET [libFuzzer arguments]")
    import atheris

    with atheris.instrument_imports(include=["pktstream"]):
        from fuzz import targets
    target = targets.TARGETS.get(argv[1])
    if target is None:
        raise SystemExit(f"unknown target {argv[1]!r}; one of {', '.join(targets.TARGETS)}")
    if argv[1] == "features":
        targets.processors()  # built once, before the first input (not counted in its time)
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
