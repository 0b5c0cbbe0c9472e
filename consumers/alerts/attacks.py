"""Attack strings in HTTP request prefixes: SQL injection, path traversal, JNDI lookups (Log4Shell)
and shell injection. Called once per distinct payload prefix (features.featurize dedupes them).

The request line and headers are percent-decoded (twice: double encoding), lower-cased, and
Log4j lookup obfuscations (``${lower:j}``, ``${::-j}``, ``${env:X:-j}``) are resolved before
matching, so that ``${${lower:j}ndi:ldap://x}`` and ``%24%7Bjndi:`` are found as ``${jndi:``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

import numpy as np
import numpy.typing as npt

from pktstream.consumers.engine.parse import payload_args
from pktstream.runtime.native import load_native

SQLI, TRAVERSAL, JNDI, SHELL = 1, 2, 4, 8
NAMES = {SQLI: "sql_injection", TRAVERSAL: "path_traversal", JNDI: "jndi_lookup", SHELL: "shell_injection"}

_SQLI = re.compile(
    r"union(\s|/\*.*?\*/)+(all(\s|/\*.*?\*/)+)?select\b"
    r"|'\s*(or|and)\s*'?[\w]+'?\s*=\s*'?[\w]+"
    r"|\b(or|and)\s+\d+\s*=\s*\d+"
    r"|;\s*(drop|delete|insert|update|truncate)\s"
    r"|\b(sleep|benchmark|pg_sleep)\s*\("
    r"|\bwaitfor\s+delay\b"
    r"|'\s*;?\s*--"
    r"|information_schema\.",
)
_TRAVERSAL = re.compile(r"(\.\.[/\\]){1,}|[/\\]\.\.$|/etc/(passwd|shadow)|\bwin\.ini\b|/proc/self/")
_SHELL = re.compile(
    r"(;|\||&&|\$\(|`)\s*(cat|id|whoami|uname|wget|curl|nc|ncat|bash|sh|python|perl|rm|chmod|ping)\b"
    r"|/bin/(ba)?sh\b",
)
# Log4j lookups that evaluate to their last character(s): ${lower:j}, ${upper:J}, ${::-j}, ${env:X:-j}, ${date:'j'}
_LOOKUP = re.compile(r"\$\{(?:lower|upper):([^${}]*)\}|\$\{[^${}]*?:-([^${}]*)\}|\$\{date:'([^'${}]*)'\}")


def _deobfuscate(text: str) -> str:
    for _ in range(8):  # nested lookups resolve from the inside out
        new = _LOOKUP.sub(lambda m: next(g for g in m.groups() if g is not None), text)
        if new == text:
            break
        text = new
    return text


def _head(payload: bytes) -> str:
    """Request line and header lines, decoded; the body (after the blank line) is left out."""
    head = payload.split(b"\r\n\r\n", 1)[0]
    text = head.decode("latin-1")
    for _ in range(2):
        text = unquote_plus(text)
    return text.lower()


# every attack above needs one of these (in some case, or percent-encoded): most requests have none
_SUSPECT = re.compile(rb"['\"`;|$()%\\]|\.\.|/etc/|/bin/|/proc/|union|select|\b(?:or|and)\b|waitfor|information_schema",
                      re.IGNORECASE)


def scan(payload: bytes) -> int:
    """Attack bits (SQLI | TRAVERSAL | JNDI | SHELL) found in an HTTP request prefix."""
    if not _SUSPECT.search(payload.split(b"\r\n\r\n", 1)[0]):
        return 0
    text = _head(payload)
    bits = 0
    line = text.split("\n", 1)[0]
    if _SQLI.search(text):
        bits |= SQLI
    if _TRAVERSAL.search(line):  # the target only: headers may carry relative paths legitimately
        bits |= TRAVERSAL
    if "${" in text and "${jndi:" in _deobfuscate(text):
        bits |= JNDI
    if _SHELL.search(line):
        bits |= SHELL
    return bits


def suspects(payloads: npt.NDArray[np.uint8], lens: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """For each row of an (n, width) payload matrix (lens: valid bytes), whether its head holds
    anything _SUSPECT looks for: the same answer as the expression, from one C loop."""
    pay, ln, n, width = payload_args(payloads, lens)
    out = np.zeros(n, dtype=np.uint8)
    if n and width:
        load_native().pkt_attack_suspects(pay.ctypes.data, n, width, width, ln.ctypes.data, out.ctypes.data)
    return out.astype(bool)


def scan_batch(payloads: npt.NDArray[np.uint8], lens: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """Attack bits of each row of an (n, width) payload matrix of HTTP requests (lens: valid
    bytes): the C prefilter passes most rows; scan() reads the others."""
    ln = np.asarray(lens, dtype=np.int64)
    out = np.zeros(len(ln), dtype=np.uint16)
    for i in np.flatnonzero(suspects(payloads, ln)).tolist():
        out[i] = scan(bytes(payloads[i, : int(ln[i])]))
    return out
