"""What a payload prefix says about the application: HTTP/1.x request, HTTP/2 preface, TLS
ClientHello. One C loop classifies a whole batch (consumers/engine/_parse.c); Python only looks at
the few distinct strings (paths, hosts) it points to.
"""

from __future__ import annotations

import re
from functools import lru_cache

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

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_NUM = re.compile(r"^[0-9]+$")
_TOKEN = re.compile(r"^(?=.*[0-9])[A-Za-z0-9_-]{20,}$")


@lru_cache(maxsize=65536)
def normalize_path(target: str) -> str:
    """A request target as a route template: query dropped, IDs in segments replaced by {id}.

    IDs are numbers, UUIDs, hex strings of 16+ digits (hashes, object ids) and long opaque
    tokens with digits in them.
    """
    path = target.split("?", 1)[0].split("#", 1)[0] or "/"
    if path.startswith(("http://", "https://")):  # absolute-form (proxies)
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    segs = path.split("/")
    out = [("{id}" if (_NUM.match(s) or _UUID.match(s) or _HEX.match(s) or _TOKEN.match(s)) else s) for s in segs]
    return "/".join(out)
