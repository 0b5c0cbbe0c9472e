"""The simple filters of a query's WHERE clause, applied to the packet topic while it is decoded.

DuckDB parses the SQL (``json_serialize_sql``, in its wheel) and only the top-level AND-ed
comparisons of a column of ``packets`` with a constant are taken, and only from a query whose
one FROM is the ``packets`` table itself (no join, no subquery, no CTE): there every row DuckDB
keeps passes each of them, so dropping the rows that fail one before the engine sees them changes
no answer. DuckDB still applies the whole WHERE clause. A message whose host, interface or run
fails a filter is skipped from its headers, without decoding.
"""

from __future__ import annotations

import ipaddress
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pktstream.schemas import load_schema_json

INT_COLUMNS = frozenset(f["name"] for f in load_schema_json("packet")["fields"] if f["type"] in ("int", "long"))
MESSAGE_COLUMNS = frozenset({"host", "interface", "run_id"})  # one value per message
ADDRESS_COLUMNS = frozenset({"src_addr", "dst_addr"})
OPS: dict[str, Callable[[Any, Any], Any]] = {"=": operator.eq, "<>": operator.ne, "<": operator.lt,
                                             "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_AST_OPS = {"COMPARE_EQUAL": "=", "COMPARE_NOTEQUAL": "<>", "COMPARE_LESSTHAN": "<",
            "COMPARE_LESSTHANOREQUALTO": "<=", "COMPARE_GREATERTHAN": ">", "COMPARE_GREATERTHANOREQUALTO": ">="}
_FLIP = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: int | str | bytes  # bytes: a 16-byte address

    def __str__(self) -> str:
        v = self.value
        return f"{self.column} {self.op} {str(ipaddress.IPv6Address(v)) if isinstance(v, bytes) else v!r}"


def pushdown(sql: str) -> list[Filter]:
    """The filters that can be applied before the engine (none when in doubt)."""
    import duckdb

    try:
        row = duckdb.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
        text = str(row[0]) if row else "{}"
        tree = json.loads(text)
    except (duckdb.Error, ValueError):
        return []
    if text.count('"SELECT_NODE"') != 1:
        return []  # a subquery anywhere (it could scan packets too): nothing is pushed down
    statements = tree.get("statements") or []
    if tree.get("error") or len(statements) != 1:
        return []
    node = statements[0].get("node") or {}
    if node.get("type") != "SELECT_NODE" or (node.get("cte_map") or {}).get("map"):
        return []
    table = node.get("from_table") or {}
    if table.get("type") != "BASE_TABLE" or table.get("table_name") != "packets" or table.get("schema_name"):
        return []
    names = {"packets", table.get("alias") or "packets"}
    out = []
    for c in _conjuncts(node.get("where_clause")):
        f = _comparison(c, names)
        if f is not None:
            out.append(f)
    return out


def _conjuncts(e: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not e:
        return []
    if e.get("type") == "CONJUNCTION_AND":
        return [x for child in e.get("children", []) for x in _conjuncts(child)]
    return [e]


def _comparison(e: Mapping[str, Any], tables: set[str]) -> Filter | None:
    op = _AST_OPS.get(str(e.get("type")))
    if e.get("class") != "COMPARISON" or op is None:
        return None
    left, right = e.get("left") or {}, e.get("right") or {}
    if left.get("class") == "CONSTANT" and right.get("class") == "COLUMN_REF":
        left, right, op = right, left, _FLIP[op]
    if left.get("class") != "COLUMN_REF" or right.get("class") != "CONSTANT":
        return None
    path = list(left.get("column_names") or [])
    if not (len(path) == 1 or (len(path) == 2 and path[0] in tables)):
        return None
    column = path[-1]
    lit = right.get("literal") or {}
    kind, text = lit.get("kind"), lit.get("text")
    if column in INT_COLUMNS and kind == "INTEGER":
        return Filter(column, op, int(str(text)))
    if column in MESSAGE_COLUMNS and kind == "STRING" and op == "=":
        return Filter(column, op, str(text))
    if column in ADDRESS_COLUMNS and kind == "STRING" and op == "=":
        try:
            ip = ipaddress.ip_address(str(text))
        except ValueError:
            return None  # text the table never holds: DuckDB answers that alone
        if ip.version == 4:
            ip = ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
        elif ip.ipv4_mapped is not None:
            return None  # shown as IPv4 in the table: '::ffff:a.b.c.d' never equals it
        return Filter(column, op, ip.packed)
    return None


def message_passes(filters: Sequence[Filter], values: Mapping[str, str]) -> bool:
    """Does a message's host, interface and run id pass the filters on them?"""
    return all(values.get(f.column) == f.value for f in filters if f.column in MESSAGE_COLUMNS)


def record_mask(filters: Sequence[Filter], columns: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.bool_] | None:
    """The records of a decoded message that pass the filters on record fields (None: all do)."""
    keep: npt.NDArray[np.bool_] | None = None
    for f in filters:
        if f.column in MESSAGE_COLUMNS or f.column not in columns:
            continue
        col = columns[f.column]
        if isinstance(f.value, bytes):
            m = (np.ascontiguousarray(col).view(np.dtype((np.void, 16))).ravel()
                 == np.frombuffer(f.value, dtype=np.dtype((np.void, 16)))[0])
        else:
            m = OPS[f.op](col.astype(np.int64), f.value)
        keep = m if keep is None else keep & m
    return keep
