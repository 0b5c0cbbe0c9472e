"""Which WHERE filters of a query are applied while the packet topic is decoded (only those that
cannot change an answer), and how they are applied."""

from __future__ import annotations

import numpy as np
import pytest

from pktstream.consumers.tools.pushdown import Filter, message_passes, pushdown, record_mask

V4 = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT src_addr, count(*) FROM packets WHERE protocol = 6 AND 443 = dst_port AND host = 'edge-1' "
     "AND src_addr = '10.0.0.1' AND (tcp_flags & 2) = 2 AND wire_len >= 100 AND 50 > ttl GROUP BY 1",
     [Filter("protocol", "=", 6), Filter("dst_port", "=", 443), Filter("host", "=", "edge-1"),
      Filter("src_addr", "=", V4), Filter("wire_len", ">=", 100), Filter("ttl", "<", 50)]),
    ("SELECT * FROM packets p WHERE p.protocol <> 17 AND p.dst_addr = '2001:db8::1'",
     [Filter("protocol", "<>", 17), Filter("dst_addr", "=", bytes.fromhex("20010db8" + "00" * 11 + "01"))]),
    # OR, subqueries, CTEs, joins, several tables: nothing (a filter could change the answer)
    ("SELECT * FROM packets WHERE protocol = 6 OR dst_port = 53", []),
    ("SELECT * FROM packets WHERE protocol = 6 AND src_addr IN (SELECT src_addr FROM packets)", []),
    ("WITH x AS (SELECT * FROM packets) SELECT * FROM x WHERE protocol = 6", []),
    ("SELECT * FROM packets JOIN usage ON true WHERE protocol = 6", []),
    ("SELECT * FROM (SELECT * FROM packets) WHERE protocol = 6", []),
    ("SELECT * FROM packets WHERE protocol = 6 UNION ALL SELECT * FROM packets WHERE protocol = 17", []),
    # what the table never holds as given, or what is not a plain comparison: left to DuckDB
    ("SELECT * FROM packets WHERE src_addr = 'not an address' AND dst_addr = '::ffff:10.0.0.1' "
     "AND protocol = '6' AND host <> 'x' AND wire_len > 1.5", []),
    ("not sql at all", []),
])
def test_what_is_pushed_down(sql: str, expected: list[Filter]) -> None:
    assert pushdown(sql) == expected


def test_filters_on_records_and_messages() -> None:
    cols = {"protocol": np.array([6, 17, 6, 6]), "dst_port": np.array([443, 53, 80, 443], np.uint16),
            "src_addr": np.frombuffer(V4 * 2 + bytes(16) + V4, np.uint8).reshape(4, 16)}
    fs = [Filter("protocol", "=", 6), Filter("dst_port", ">=", 100), Filter("src_addr", "=", V4),
          Filter("host", "=", "a"), Filter("direction", "=", 1)]  # a field older data lacks: not applied
    mask = record_mask(fs, cols)
    assert mask is not None and mask.tolist() == [True, False, False, True]
    assert record_mask([Filter("host", "=", "a")], cols) is None
    assert message_passes(fs, {"host": "a", "interface": "eth0"})
    assert not message_passes(fs, {"host": "b", "interface": "eth0"})
