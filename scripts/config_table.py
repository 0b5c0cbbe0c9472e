"""Rewrite the settings table in docs/configuration.md from ProducerConfig (run after adding a setting)."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from pktstream.producer.cli import _PRODUCE_FLAGS
from pktstream.producer.config import ProducerConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
HEAD = "| setting | flag | variable | default | meaning |"


def main() -> None:
    flag_of = {f: fl for fl, f, _, _ in _PRODUCE_FLAGS}
    flag_of.update(adaptive_sampling="--no-adaptive-sampling", redact="--no-redact",
                   redact_http2_headers="--keep-http2-headers")
    rows = [HEAD, "| --- | --- | --- | --- | --- |"]
    for f in fields(ProducerConfig):
        if f.name == "kafka":
            continue
        default = f.default if f.default is not MISSING else ""
        flag = f"`{flag_of[f.name]}`" if f.name in flag_of else ""
        rows.append(f"| `{f.name}` | {flag} | `PKTSTREAM_{f.name.upper()}` | `{default!r}` | {f.metadata['doc']} |")
    text = DOC.read_text()
    start = text.index(HEAD)
    end = text.index("\n\n", start)
    DOC.write_text(text[:start] + "\n".join(rows) + text[end:])


if __name__ == "__main__":
    main()
