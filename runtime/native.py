"""The compiled loops (schemas/_codec.c, producer/_redact.c, consumers/engine/_parse.c and _agg.c:
one shared library built with the package), loaded with ctypes (plain C, no Python API).

``PKTSTREAM_NATIVE_LIB=/path/to/lib.so`` loads another build of the same sources instead: the fuzz
campaigns (fuzz/campaign.py) load one built with the sanitizers."""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import cache
from pathlib import Path

import numpy as np

_I64P = np.ctypeslib.ndpointer(dtype=np.int64, flags="C_CONTIGUOUS")
_U8P = np.ctypeslib.ndpointer(dtype=np.uint8, flags="C_CONTIGUOUS")
NATIVE_LIB_ENV = "PKTSTREAM_NATIVE_LIB"


@cache
def load_native() -> ctypes.CDLL:
    here = Path(__file__).parent
    override = os.environ.get(NATIVE_LIB_ENV)
    if override and not Path(override).exists():
        raise ImportError(f"{NATIVE_LIB_ENV} names {override}, which does not exist")
    paths = [Path(override)] if override else [here / f"_native{s}" for s in importlib.machinery.EXTENSION_SUFFIXES]
    for path in paths:
        if path.exists():
            lib = ctypes.CDLL(str(path))
            i64 = ctypes.c_int64
            lib.pkt_avro_encode.restype = i64
            lib.pkt_avro_encode.argtypes = [
                i64, i64, _I64P, _I64P, _I64P, i64, _U8P, i64, _I64P, _I64P, _U8P, i64, _I64P, _I64P,
                _I64P, i64, _U8P, i64,
            ]
            lib.pkt_avro_decode.restype = i64
            lib.pkt_avro_decode.argtypes = [
                _U8P, i64, i64, i64, _I64P, _I64P, _I64P, i64, _U8P, i64, _I64P, _I64P, i64, _U8P, i64, _I64P,
                _I64P, i64, _I64P, i64,
            ]
            lib.pkt_avro_frame.restype = i64
            lib.pkt_avro_frame.argtypes = [_U8P, i64, i64, i64, _I64P, _I64P, ctypes.c_char_p, i64, ctypes.c_char_p,
                                           i64, _U8P, i64, _I64P]
            lib.pkt_parse_payloads.restype = i64
            lib.pkt_parse_payloads.argtypes = [ctypes.c_void_p, i64, i64, i64, ctypes.c_void_p, ctypes.c_void_p]
            lib.pkt_attack_suspects.restype = None
            lib.pkt_attack_suspects.argtypes = [ctypes.c_void_p, i64, i64, i64, ctypes.c_void_p, ctypes.c_void_p]
            lib.pkt_redact.restype = i64
            lib.pkt_redact.argtypes = [ctypes.c_void_p, i64, i64, i64, ctypes.c_void_p, i64, ctypes.c_char_p, i64]
            return lib
    raise ImportError(f"pktstream's compiled loops (_native*.so) are missing in {here}; reinstall pktstream")
