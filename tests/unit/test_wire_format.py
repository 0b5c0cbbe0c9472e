"""The schema-registry wire format's framing, the --wire-format setting, the registry client's
settings, and the OCSF JSON Schemas the JSON topics register (tests/e2e/test_registry.py has the
real registry and the readers users run)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from pktstream.consumers.engine.app import wire_formats
from pktstream.consumers.engine.wirein import WireReader
from pktstream.consumers.relay.relay import relayed_schema
from pktstream.runtime.cli import main
from pktstream.runtime.errors import ConfigError
from pktstream.runtime.registry import registry_properties
from pktstream.schemas import load_schema_json, wire
from tests.support.avro_records import record_st


def test_a_record_is_five_bytes_then_the_datum_as_confluents_serializers_write_it() -> None:
    schema = fastavro.parse_schema(load_schema_json("usage"))
    rec = {"api": "users.get", "matched": True, "window_start_ms": 1_700_000_000_000, "window_s": 60,
           "host": "10.0.0.1", "port": 443, "protocol": "tcp", "requests": 3, "partial_requests": 0, "packets": 9,
           "bytes": 900, "new_connections": 1, "methods": {"GET": 3}, "distinct_clients": 1, "top_clients": [],
           "seen_by": ["h/eth0"], "sampled": False}
    v = wire.avro_datum(258, schema, rec)
    assert v[:5] == b"\x00\x00\x00\x01\x02"  # magic byte, id 258 big-endian
    assert wire.framed(v)
    sid, body = wire.unframe(v)
    assert sid == 258
    back = fastavro.schemaless_reader(io.BytesIO(bytes(body)), schema, schema)
    assert isinstance(back, dict) and back["requests"] == 3 and back["methods"] == {"GET": 3}
    assert wire.frame(7, b'{"a":1}') == b"\x00\x00\x00\x00\x07{\"a\":1}"


@pytest.mark.parametrize("value", [b"Obj\x01rest", b'{"class_uid":4001}', b" {}", b"\x00\x00\x00\x01", b""])
def test_pktstreams_own_forms_are_never_taken_for_the_wire_format(value: bytes) -> None:
    assert not wire.framed(value)
    with pytest.raises(ValueError):
        wire.unframe(value)
    assert WireReader().json_bytes(value) == value


def test_a_json_document_in_the_wire_format_reads_without_the_registry() -> None:
    assert WireReader().json_bytes(wire.frame(12, b'{"x":2}')) == b'{"x":2}'


def test_wire_format_picks_per_topic_and_lists_every_problem() -> None:
    topics = ["a.conn", "a.dns", "a.http"]
    assert wire_formats(None, topics) == set()
    assert wire_formats(["registry"], topics) == set(topics)
    assert wire_formats(["registry", "a.dns=native"], topics) == {"a.conn", "a.http"}
    assert wire_formats(["a.http=registry"], topics) == {"a.http"}
    with pytest.raises(ConfigError) as ei:
        wire_formats(["avro-confluent", "a.nope=registry", "a.dns=json"], topics)
    assert ei.value.problems == [
        "--wire-format 'avro-confluent': the format is native or registry",
        "--wire-format 'a.nope=registry': 'a.nope' is not one of this app's output topics (a.conn, a.dns, a.http)",
        "--wire-format 'a.dns=json': the format is native or registry",
    ]


def test_a_wrong_wire_format_is_told_with_the_other_problems_before_anything_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    saved = structlog.get_config()  # the command configures logging onto this test's captured stderr
    try:
        rc = main(["usage", "--wire-format", "confluent", "--grace-s", "-1", "--bootstrap-servers", "127.0.0.1:9"])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert rc == 2
    assert "--grace-s must be >= 0" in err and "--wire-format 'confluent': the format is native or registry" in err


def test_registry_settings_file_then_variables_then_the_url_flag(tmp_path: Path) -> None:
    f = tmp_path / "registry.properties"
    f.write_text("url=http://file:8081\nbasic.auth.user.info=u:p\nssl.ca.location=/etc/ca.pem\n")
    env = {"PKTSTREAM_SCHEMA_REGISTRY__BASIC__AUTH__USER__INFO": "env:pw", "PKTSTREAM_SCHEMA_REGISTRY_URL": "http://env"}
    assert registry_properties(None, str(f), env) == {"url": "http://env", "basic.auth.user.info": "env:pw",
                                                      "ssl.ca.location": "/etc/ca.pem"}
    assert registry_properties("https://flag:8081", str(f), env)["url"] == "https://flag:8081"
    assert registry_properties(None, None, {}) == {"url": "http://127.0.0.1:8081/apis/ccompat/v7"}
    with pytest.raises(ConfigError) as ei:
        registry_properties("ftp://x", str(tmp_path / "missing"), {})
    assert len(ei.value.problems) == 2
    assert "ftp://x" in str(ei.value) and "missing" in str(ei.value)


@pytest.mark.parametrize("cls", ["detection_finding", "network_activity", "http_activity", "dns_activity"])
def test_the_registered_json_schemas_are_ocsfs_own(cls: str) -> None:
    """What a JSON topic registers is what OCSF's published schema generates now (run
    scripts/ocsf_schemas.py when this fails after an upgrade of the generator)."""
    ours = json.loads(wire.ocsf_json_schema(cls))
    assert ours == OcsfJsonSchemaEmbedded(get_ocsf_schema(version="1.3.0")).get_class_schema(cls)
    assert ours["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@settings(max_examples=150, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=20), st.text(max_size=30), st.text(max_size=10))
def test_a_block_cut_into_messages_reads_record_by_record_in_apaches_avro(
        records: list[dict[str, Any]], host: str, iface: str) -> None:
    """The relay's framing (pkt_avro_frame): each message is 0x00, the id, one datum of the relayed
    schema (the packet record, then host and interface), as Apache's avro package reads it."""
    packet = load_schema_json("packet")
    buf = io.BytesIO()
    for r in records:
        fastavro.schemaless_writer(buf, fastavro.parse_schema(packet), r)
    kinds, sizes = wire.layout(packet)
    out, ends = wire.frame_block(buf.getvalue(), len(records), kinds, sizes, wire.head(77),
                                 wire.avro_string(host) + wire.avro_string(iface))
    assert len(ends) == len(records)
    reader = avro.io.DatumReader(avro.schema.parse(json.dumps(relayed_schema())))
    start = 0
    for r, end in zip(records, ends.tolist(), strict=True):
        msg = out[start:end]
        assert wire.unframe(msg)[0] == 77
        got = reader.read(avro.io.BinaryDecoder(io.BytesIO(msg[5:])))
        assert got == {**r, "host": host, "interface": iface}
        start = end


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=8))
def test_a_block_that_is_not_records_is_refused_never_misread(block: bytes, n: int) -> None:
    kinds, sizes = wire.layout(load_schema_json("packet"))
    try:
        out, ends = wire.frame_block(block, n, kinds, sizes, wire.head(1))
    except ValueError:
        return
    # what frames is n whole records, the whole block: each reads back with fastavro
    schema = fastavro.parse_schema(load_schema_json("packet"))
    assert len(out) == len(block) + 5 * n
    start = 0
    for end in ends.tolist():
        fastavro.schemaless_reader(io.BytesIO(out[start + 5:end]), schema, schema)
        start = end


def _relayed_value(sid: int, record: dict[str, Any], host: str, iface: str) -> bytes:
    return wire.avro_datum(sid, fastavro.parse_schema(relayed_schema()), {**record, "host": host, "interface": iface})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(record_st, st.sampled_from(["h-a", "h-b", "é-c", ""]), st.sampled_from(["eth0", "wg1"])),
                min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 11), st.binary(max_size=3), st.booleans()), max_size=3))
def test_relayed_messages_read_as_their_records_and_one_bad_message_spoils_no_other(
        rows: list[tuple[dict[str, Any], str, str]], spoil: list[tuple[int, bytes, bool]]) -> None:
    """A run of the relay's messages (engine/wirein.py, schemas/columns.read_relayed): a batch per capture
    point whose columns are its records (as fastavro writes them); a message with bytes added or cut, or
    under a schema id that names no relayed schema, is named and the others read all the same."""
    values = [_relayed_value(5, r, h, i) for r, h, i in rows]
    spoiled: set[int] = set()
    for at, extra, cut in spoil:
        if at < len(values) and at not in spoiled:  # (once: a byte cut and one added may make a record again)
            values[at] = values[at][:-1] if cut else values[at] + extra
            spoiled |= {at} if cut or extra else set()
    values.append(_relayed_value(6, rows[0][0], rows[0][1], rows[0][2]))  # id 6: not the relayed schema
    wr = WireReader()
    wr._writers[(5, "relayed")] = fastavro.parse_schema(relayed_schema())
    wr._unknown[(6, "relayed")] = float("inf")
    origins, bad, n = wr.relayed(values)
    assert len(values) - 1 in bad and "schema id 6" in bad[len(values) - 1]
    # a cut or extended message may still read as one record only if it is one; ours never is
    assert spoiled <= set(bad)
    good = [i for i in range(len(rows)) if i not in bad]
    assert n == len(good) == sum(o.batch.n for o in origins)
    seen: list[int] = []
    for o in origins:
        assert {(rows[i][1], rows[i][2]) for i in o.messages} == {(o.host, o.interface)}
        want = [rows[i][0] for i in o.messages]
        cols = o.batch.columns
        assert "host" not in cols and "interface" not in cols
        assert cols["seq"].tolist() == [r["seq"] for r in want]
        assert cols["ts_ns"].tolist() == [r["ts_ns"] for r in want]
        assert [bytes(cols["src_addr"][k]) for k in range(o.batch.n)] == [r["src_addr"] for r in want]
        assert [bytes(cols["payload"][k, : cols["payload__len"][k]]) for k in range(o.batch.n)] == \
            [r["payload"][:256] for r in want]
        seen += o.messages
    assert sorted(seen) == good


def test_a_relayed_name_longer_than_the_relay_writes_is_set_aside() -> None:
    rec = {f["name"]: (bytes(16) if f["name"].endswith("_addr") else b"" if f["type"] == "bytes" else 0)
           for f in load_schema_json("packet")["fields"]}
    wr = WireReader()
    wr._writers[(5, "relayed")] = fastavro.parse_schema(relayed_schema())
    origins, bad, n = wr.relayed([_relayed_value(5, rec, "x" * 300, "eth0"), _relayed_value(5, rec, "ok", "eth0")])
    assert list(bad) == [0] and "longer than 255 bytes" in bad[0]
    assert n == 1 and [(o.host, o.interface, o.messages) for o in origins] == [("ok", "eth0", [1])]


def test_relayed_messages_are_set_aside_not_fatal_when_the_unnamed_registry_is_down() -> None:
    """A packet topic in pktstream's own form may hold a message that merely begins with 0x00 (any host
    writes it): without a registry named, one that cannot be reached sets it aside; a named one stops
    the reader with a clear error."""
    from pktstream.runtime.errors import PktstreamError

    value = wire.frame(9, b"\x02\x04")
    down = {"url": "http://127.0.0.1:9/apis/ccompat/v7"}
    origins, bad, n = WireReader(lambda: down).relayed([value])
    assert (origins, n) == ([], 0) and "could not be reached" in bad[0]
    with pytest.raises(PktstreamError, match="cannot be reached"):
        WireReader(lambda: down, named=True).relayed([value])


def test_new_schema_ids_are_looked_up_at_a_bounded_rate() -> None:
    """Ids no one registered, one after another (a hostile writer), cost at most MAX_LOOKUPS_PER_CALL
    registry calls per run read at once and MAX_LOOKUPS_PER_S a second; beyond that they are set aside
    without one."""
    from pktstream.consumers.engine.wirein import MAX_LOOKUPS_PER_CALL, MAX_LOOKUPS_PER_S

    calls: list[int] = []

    class Absent:
        def schema(self, sid: int) -> tuple[str, str]:
            calls.append(sid)
            raise LookupError(sid)

    wr = WireReader()
    wr._registry = Absent()
    _origins, bad, _n = wr.relayed([wire.frame(100 + i, b"\x00") for i in range(3 * MAX_LOOKUPS_PER_S)])
    assert len(calls) == MAX_LOOKUPS_PER_CALL and len(bad) == 3 * MAX_LOOKUPS_PER_S
    assert sum("too many new schema ids" in why for why in bad.values()) == 3 * MAX_LOOKUPS_PER_S - len(calls)
    for k in range(3 * MAX_LOOKUPS_PER_S):  # run after run, within a second
        wr.relayed([wire.frame(1000 + 10 * k + i, b"\x00") for i in range(10)])
    assert len(calls) <= 2 * MAX_LOOKUPS_PER_S  # (two one-second windows at most on a slow machine)
    before = len(calls)
    wr.relayed([wire.frame(100, b"\x00")])  # an id already answered is not asked again
    assert len(calls) == before


def test_made_up_ids_never_stand_between_the_reader_and_the_relayed_schema() -> None:
    """Ids a hostile writer makes up, as many as it likes, first and all along: the relayed schema's id
    is asked of its subject (TOPIC-value) once and kept, so the relay's records read all the same; the
    made-up ids cost a bounded number of lookups and are set aside."""
    from pktstream.consumers.engine.wirein import MAX_LOOKUPS_PER_S, MAX_WRITER_SCHEMAS

    asked: list[Any] = []

    class Registry:
        def lookup(self, subject: str, schema: str, schema_type: str = "AVRO") -> int | None:
            asked.append(subject)
            return 5 if subject == "relayed-topic-value" and json.loads(schema) == relayed_schema() else None

        def schema(self, sid: int) -> tuple[str, str]:
            asked.append(sid)
            raise LookupError(sid)

    rec = {f["name"]: (bytes(16) if f["name"].endswith("_addr") else b"" if f["type"] == "bytes" else 0)
           for f in load_schema_json("packet")["fields"]}
    wr = WireReader()
    wr._registry = Registry()
    hostile = [wire.frame(1000 + i, b"\x00") for i in range(2 * MAX_WRITER_SCHEMAS)]
    honest = _relayed_value(5, rec, "h", "eth0")
    for k in range(4):
        origins, bad, n = wr.relayed([*hostile[k::4], honest], "relayed-topic")
        assert n == 1 and [(o.host, o.messages) for o in origins] == [("h", [len(hostile[k::4])])]
        assert len(bad) == len(hostile[k::4])
    assert asked.count("relayed-topic-value") == 1
    assert len(asked) <= 1 + MAX_LOOKUPS_PER_S * 2  # (two one-second windows at most on a slow machine)


@pytest.mark.parametrize(("status", "code", "kind"), [
    (404, 40403, LookupError), (404, 40401, LookupError), (400, 400, LookupError), (422, 42201, LookupError),
    (404, -1, "error"), (401, 401, "error"), (403, 40301, "error"), (500, 50001, "error"), (503, -1, "error")])
def test_registry_answers_read_as_nothing_or_as_a_failure(status: int, code: int, kind: Any) -> None:
    """What a registry answers about an id a message names: 'no such schema' and refusals of the
    question read as nothing (the id is untrusted input); a 404 of no registry (a wrong URL), 401/403
    and 5xx are failures the reader must not hide."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from pktstream.runtime.errors import PktstreamError
    from pktstream.runtime.registry import Registry

    reg = Registry({"url": "http://127.0.0.1:9"})
    err = reg._failure(SchemaRegistryError(status, code, "no"), "schema id 7")
    assert isinstance(err, LookupError if kind is LookupError else PktstreamError)
    with pytest.raises(LookupError, match="out of a registry's range"):
        reg.schema(1 << 31)


def test_one_id_the_registry_will_not_answer_for_is_set_aside_alone_and_bad_credentials_stop() -> None:
    """A registry that refuses the question about one id (another team's schema: 403) sets that message
    aside, even when the registry was named; one that fails (503) or times out holds them (a named one:
    PktstreamError, which the consumers wait out) and forgets nothing; one that refuses us the relayed
    topic's own subject (the credentials) stops the reader with a clear error; the subject is asked
    again while it does not hold the schema (the relay registers it later)."""
    from pktstream.runtime.errors import ConfigError, PktstreamError
    from pktstream.runtime.registry import RegistryFailure

    class Registry:
        def __init__(self) -> None:
            self.found: int | None = None
            self.id_status: int | None = 403
            self.subject_status: int | None = None

        def lookup(self, subject: str, schema: str, schema_type: str = "AVRO") -> int | None:
            if self.subject_status is not None:
                raise RegistryFailure(f"HTTP {self.subject_status}", self.subject_status)
            return self.found

        def schema(self, sid: int) -> tuple[str, str]:
            raise RegistryFailure(f"the schema registry at x: HTTP {self.id_status}", self.id_status)

    rec = {f["name"]: (bytes(16) if f["name"].endswith("_addr") else b"" if f["type"] == "bytes" else 0)
           for f in load_schema_json("packet")["fields"]}
    honest, foreign = _relayed_value(5, rec, "h", "eth0"), wire.frame(77, b"\x00")
    wr = WireReader(named=True)
    wr._registry = reg = Registry()
    origins, bad, n = wr.relayed([honest, foreign, honest], "t")
    assert n == 0 and set(bad) == {0, 1, 2}  # the relay's id is not known yet: set aside, not fatal
    assert "would not answer for it" in bad[1]
    reg.found = 5
    wr._subjects["t"] = 0.0  # (as SUBJECT_RETRY_S later)
    wr._unknown.clear()
    origins, bad, n = wr.relayed([honest, foreign, honest], "t")
    assert n == 2 and list(bad) == [1] and origins[0].messages == [0, 2]
    reg.id_status = 503  # a failing registry is not the id's fault: held, not remembered as nothing
    with pytest.raises(PktstreamError, match="503"):
        wr.relayed([wire.frame(78, b"\x00")], "t")
    assert (78, "relayed") not in wr._unknown
    wr2 = WireReader(named=False)
    wr2._registry = reg2 = Registry()
    reg2.subject_status = 401
    with pytest.raises(ConfigError, match="subject t-value"):
        wr2.relayed([foreign], "t")


def test_numeric_registry_settings_from_a_properties_file_are_numbers() -> None:
    from pktstream.runtime.registry import Registry

    reg = Registry({"url": "http://127.0.0.1:9", "timeout": "5", "max.retries": "2", "retries.wait.ms": "100"})
    assert reg.client._rest_client.timeout == 5.0 and reg.client._rest_client.max_retries == 2
    with pytest.raises(ConfigError) as e:
        Registry({"url": "http://127.0.0.1:9", "timeout": "soon", "max.retries": "x"})
    assert len(e.value.problems) == 2
    with pytest.raises(ConfigError) as e:
        Registry({"url": "http://127.0.0.1:9", "timeout": "inf", "max.retries": "-1"})
    assert len(e.value.problems) == 2


def test_a_message_featurize_refuses_is_set_aside_alone_and_the_rest_of_its_run_is_counted() -> None:
    """The runner's fallback when featurize fails on a capture point's records of a run: halves apart,
    down to the failing messages alone (runner._featurize_apart), in a few calls, not one per message."""
    import numpy as np

    from pktstream.consumers.engine.runner import StreamRunner
    from pktstream.schemas.columns import Batch

    calls: list[int] = []

    class Proc:
        def featurize(self, batch: Batch, origin: str) -> Any:
            calls.append(batch.n)
            if (batch.columns["seq"] == 13).any():
                raise ValueError("a hostile record")
            return batch.columns["seq"].tolist()

    r = object.__new__(StreamRunner)
    r.proc = Proc()  # type: ignore[assignment]
    set_aside: list[int] = []
    r._undecodable = lambda m, e: set_aside.append(m)  # type: ignore[method-assign]
    n = 1000
    seq = np.arange(n, dtype=np.int64)
    seq[[13, 700]] = 13  # messages 13 and 700 hold the hostile records
    out: list[Any] = []
    r._featurize_apart(list(range(n)), list(range(n)), np.arange(n, dtype=np.int64),
                       Batch({}, n, {"seq": seq}), "h/eth0", out)
    assert sorted(set_aside) == [13, 700]
    assert sorted(i for msgs, _b, _f in out for i in msgs) == [i for i in range(n) if i not in (13, 700)]
    assert all(f == b.columns["seq"].tolist() for _m, b, f in out)
    assert len(calls) < 50
