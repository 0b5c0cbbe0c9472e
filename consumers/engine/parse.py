"""What a payload prefix says about the application: HTTP/1.x request, HTTP/2 preface, TLS
ClientHello. One C loop classifies a whole batch (consumers/engine/_parse.c); Python only looks at
the few distinct strings (paths, hosts) it points to.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

import numpy as np
import numpy.typing as npt

from pktstream.runtime.native import load_native

_native = load_native()

OUT_COLS = 10
KIND, METHOD, PATH_OFF, PATH_LEN, HOST_OFF, HOST_LEN, FLAGS, VERSION, STATUS, CONTENT_LENGTH = range(10)
KIND_NONE, KIND_HTTP1, KIND_H2_PREFACE, KIND_TLS_HELLO, KIND_HTTP1_RESPONSE = range(5)
METHODS = ("", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")
F_LINE_CUT, F_HEADERS_CUT, F_NO_HOST, F_TLS_CUT = 1, 2, 4, 8


def payload_args(payload: npt.ArrayLike, cap_len: npt.ArrayLike) -> tuple[npt.NDArray[np.uint8],
                                                                         npt.NDArray[np.int64], int, int]:
    """An (n, width) payload matrix and its valid lengths as the C loops take them: contiguous
    uint8 and int64, with n and width."""
    pay = np.ascontiguousarray(payload, dtype=np.uint8)
    n = pay.shape[0]
    width = pay.shape[1] if pay.ndim == 2 else 0
    lens = np.ascontiguousarray(cap_len, dtype=np.int64)
    if lens.shape != (n,):
        raise ValueError("cap_len must have one length per row")
    return pay, lens, n, width


def parse_payloads(payload: npt.NDArray[np.uint8], cap_len: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """(n, 10) int32: kind, method, path offset/length, host (or SNI) offset/length, flags, version,
    an HTTP/1.x response's status code (0 otherwise), Content-Length (-1 when the prefix does not
    hold it whole; 0 for what is not HTTP/1.x)."""
    payload, lens, n, width = payload_args(payload, cap_len)
    out = np.zeros((n, OUT_COLS), dtype=np.int32)
    if n and width:
        _native.pkt_parse_payloads(payload.ctypes.data, n, width, width, lens.ctypes.data, out.ctypes.data)
    return out


def slice_text(payload: npt.NDArray[np.uint8], row: int, off: int, length: int) -> str:
    return bytes(payload[row, off : off + length]).decode("latin-1")


# -- path templates -----------------------------------------------------------------------------
#
# What traffic puts in a path must not reach an API name, a metric label or a snapshot when it is a
# credential or a personal address. Each segment is judged on its own (percent-encoding undone
# first); one that holds one of these becomes a placeholder:
#
#   {token}  a credential by its shape (JWT, vendor keys) or bytes the producer redacted (``*``)
#   {email}  an e-mail address
#   {id}     a number, UUID, hex string of 16+ digits, or a long opaque run (base64/base64url-ish)

ID, TOKEN, EMAIL = "{id}", "{token}", "{email}"

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{16,}")
_NUM = re.compile(r"[0-9]+")
# credentials by shape, anywhere in a segment but not inside a longer word (case matters: AIza, AKIA)
_SECRET = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"eyJ[A-Za-z0-9_-]{4,}"  # JWT / JWS / JWE: base64url of '{"', dotted parts; a cut one too
    r"|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}"  # GitHub
    r"|glpat-[A-Za-z0-9_-]{16,}"  # GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|AIza[A-Za-z0-9_-]{35}"  # Google API key
    r"|ya29\.[A-Za-z0-9_-]{16,}"  # Google OAuth access token
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"  # AWS access key id
    r"|npm_[A-Za-z0-9]{36}"  # npm
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"  # SendGrid
    r")")
# a@b.c: the domain ends in letters, so package@1.2.3 (unpkg, npm) is not one (matched from the "@":
# linear in the segment's length)
_EMAIL = re.compile(r"(?<=[A-Za-z0-9._%+-])@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,}(?![A-Za-z0-9-])")
_USERINFO = re.compile(r"[^:@]*:[^@]*@")  # user:password@host (an absolute-form target's authority)
# opaque runs: base64 / base64url / ~ alphabets (a %2F-decoded "/" included); "." "=" ";" ":" etc. part them
_RUN = re.compile(r"[A-Za-z0-9_\-~+/]{20,}")
_MATRIX_VALUE = re.compile(r"(;[^;=/]*=)[^;/]+")  # ;name=value
_SHORT_SUSPECT = re.compile(r"[*@%]|eyJ|xox")  # what a segment shorter than 16 may hold but a number
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")  # camelCase words, acronyms
_LONE_LOWER = re.compile(r"(?<=[A-Z])[a-z](?=[A-Z]|$)")  # "aBcD": one lower-case letter between capitals
_NOT_LETTER = re.compile(r"[^A-Za-z]+")
_VOWELS = frozenset("aeiouyAEIOUY")


def _scrambled(letters: str) -> bool:
    """Whether mixed-case letters read as random rather than as camelCase words: short words, few
    vowels, lone lower-case letters between capitals (in random letters half the letters are capitals;
    tuned on ~7,700 camelCase identifiers, of which one reads as random, while ~88% of random runs do)."""
    words = _WORD.findall(letters)
    mean = len(letters) / max(len(words), 1)
    vowels = sum(c in _VOWELS for c in letters) / len(letters)
    return mean < 2.7 or len(_LONE_LOWER.findall(letters)) >= 3 or (vowels < 0.25 and mean < 3.5)


def _opaque(run: str) -> bool:
    """A run of 20+ base64-ish characters that reads as a token or an id: with digits, or with
    letters of both cases that do not read as camelCase words."""
    if any(c.isdigit() for c in run):
        return True
    letters = _NOT_LETTER.sub("", run)
    return len(letters) >= 16 and not letters.islower() and not letters.isupper() and _scrambled(letters)


def _unquote(seg: str) -> str:
    """Percent-encoding undone (twice-encoded too), byte for byte."""
    for _ in range(3):
        if "%" not in seg:
            break
        dec = unquote(seg, encoding="latin-1")
        if dec == seg:
            break
        seg = dec
    return seg


def _placeholder(seg: str, ids: bool) -> str | None:
    """The placeholder a path segment becomes, or None to keep it. ``ids``: numbers and UUIDs too
    (else they are kept, but for numbers of 16+ digits)."""
    if len(seg) < 16 and not _SHORT_SUSPECT.search(seg):  # most segments: words, short numbers
        return ID if ids and _NUM.fullmatch(seg) else None
    d = _unquote(seg)
    if "*" in d and d != "*":  # the producer's redaction: secret bytes replaced by '*', lengths kept
        return TOKEN
    if "@" in d:
        if _EMAIL.search(d):
            return EMAIL
        if _USERINFO.match(d):
            return TOKEN
    if _SECRET.search(d):
        return TOKEN
    if _UUID.fullmatch(d) or (_NUM.fullmatch(d) and len(d) < 16):  # 16+ digits: a card number, say
        return ID if ids else None
    if _HEX.fullmatch(d) or any(_opaque(r) for r in _RUN.findall(d)):
        return ID
    return None


def _path_of(target: str) -> str:
    path = target.split("?", 1)[0].split("#", 1)[0] or "/"
    if path[:8].lower().startswith(("http://", "https://")):  # absolute-form (proxies): authority dropped
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    return path


@lru_cache(maxsize=65536)
def normalize_path(target: str) -> str:
    """A request target as a route template: what an API name, an ``http_route`` label and consumer
    state hold of it.

    The query and fragment are dropped, and matrix parameters (``;jsessionid=...``) from each
    segment. A segment becomes

    - ``{token}`` when it holds a credential by its shape: a JWT (``eyJ...``, also cut), a GitHub
      (``ghp_`` ``gho_`` ``ghu_`` ``ghs_`` ``ghr_`` ``github_pat_``), GitLab (``glpat-``), Slack
      (``xoxb-`` ...), Stripe (``sk_live_`` ``rk_live_`` ``sk_test_`` ``rk_test_``), Google
      (``AIza``, ``ya29.``), AWS (``AKIA`` ``ASIA``), npm or SendGrid key, or bytes the producer
      redacted (a ``*`` in it: secrets are starred with their lengths kept; a lone ``*`` stays);
    - ``{email}`` when it holds an e-mail address (``a@b.c``);
    - ``{id}`` when it is a number, a UUID, a hex string of 16+ digits, or holds a long opaque
      run: 20+ base64/base64url characters (``A-Z a-z 0-9 - _ ~ +``) with digits in them, or
      with letters of both cases that do not read as camelCase words (``.`` ``=`` ``:`` and the
      like part runs: ``main.<hash>.js`` and ``key=<token>`` become ``{id}`` too).

    Segments are judged with percent-encoding undone (``%40`` is ``@``); a kept segment is kept
    as it came. Words, versions and file names stay (``/v1/users``, ``/api/2024-01-01/things``,
    ``/static/app.min.js``). An opaque run is ``{id}``, as before there were named placeholders:
    its shape cannot tell an id (a nanoid, a ULID, a short link) from a secret; ``{token}`` says
    the shape did.
    """
    out = []
    for s in _path_of(target).split("/"):
        s = s.split(";", 1)[0]
        out.append(_placeholder(s, True) or s)
    return "/".join(out)


@lru_cache(maxsize=65536)
def redact_path(path: str) -> str:
    """A request path (the query already cut) as evidence shows it: the segments ``normalize_path``
    makes ``{token}``, ``{email}`` or ``{id}`` for a hex string or an opaque run replaced the same
    way, judged whole (matrix parameters included); everything else kept as it came, numbers and
    UUIDs, attack text and all, but for the values of matrix parameters (``;jsessionid=...``), which
    read ``{token}``."""
    return "/".join(_placeholder(s, False) or _MATRIX_VALUE.sub(r"\1" + TOKEN, s) for s in path.split("/"))
