from __future__ import annotations

from pathlib import Path

import pytest

from pktstream.producer.config import ProducerConfig, load_config
from pktstream.runtime.errors import ConfigError


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg.topic == "pktstream.packets"
    assert cfg.payload_bytes == 64
    assert cfg.codec == "null" and cfg.compression == "zstd"
    assert cfg.host_id


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(
            flags={"payload_bytes": 300, "codec": "lzma", "xdp_mode": "turbo", "topic": "bad topic!",
                   "direction": "sideways", "egress_hook": "ebpf"},
            env={"PKTSTREAM_RINGBUF_BYTES": "1000", "PKTSTREAM_BATCH_RECORDS": "many", "PKTSTREAM_NOPE": "1"},
        )
    msg = str(ei.value)
    problems = ei.value.problems
    assert len(problems) == 9, problems
    for needle in ("payload_bytes: 300", "codec: 'lzma'", "xdp_mode: 'turbo'", "topic: 'bad topic!'",
                   "ringbuf_bytes: 1000", "batch_records: 'many' is not a valid int", "PKTSTREAM_NOPE",
                   "direction: 'sideways' is not one of both, ingress, egress",
                   "egress_hook: 'ebpf' is not one of auto, tcx, tc"):
        assert needle in msg


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('topic = "from-file"\npayload_bytes = 10\nbatch_records = 5\n[kafka]\n"security.protocol" = "SSL"\n')
    cfg = load_config(flags={"payload_bytes": 20}, env={"PKTSTREAM_BATCH_RECORDS": "7",
                                                         "PKTSTREAM_KAFKA__SASL__MECHANISM": "SCRAM-SHA-512"},
                      config_file=f, kafka_overrides={"sasl.password": "hunter2"})
    assert (cfg.topic, cfg.payload_bytes, cfg.batch_records) == ("from-file", 20, 7)
    assert cfg.kafka == {"security.protocol": "SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.password": "hunter2"}


def test_secrets_never_in_logged_config() -> None:
    cfg = ProducerConfig(kafka={"sasl.password": "hunter2", "ssl.key.password": "k", "sasl.username": "u"})
    red = cfg.redacted()
    assert "hunter2" not in repr(red)
    assert red["kafka"]["sasl.username"] == "u"


def test_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("topic = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(env={}, config_file=f)
    with pytest.raises(ConfigError, match="No such file"):
        load_config(env={}, config_file=tmp_path / "missing.toml")


def test_every_setting_is_in_the_configuration_reference() -> None:
    from dataclasses import fields
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for f in fields(ProducerConfig):
        if f.name != "kafka":
            assert f"| `{f.name}` |" in doc, f"docs/configuration.md lacks {f.name}"



# -- secrets off the command line, service links, the host id ------------------------------------


def test_kafka_properties_file_then_variables_then_flags(tmp_path: Path) -> None:
    props = tmp_path / "kafka.properties"
    props.write_text("# written by the deployment\nsecurity.protocol=SASL_SSL\nsasl.mechanism : SCRAM-SHA-512\n"
                     "! another comment\n\nsasl.username=producer-a\nsasl.password=from-file\n")
    cfg = load_config(env={"PKTSTREAM_KAFKA_CONFIG": str(props), "PKTSTREAM_KAFKA__SASL__PASSWORD": "from-env"},
                      kafka_overrides={"sasl.username": "from-flag"})
    assert cfg.kafka == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                         "sasl.username": "from-flag", "sasl.password": "from-env"}
    assert cfg.redacted()["kafka"]["sasl.password"] == "***"
    assert load_config(env={}, flags={"kafka_config": str(props)}).kafka["sasl.password"] == "from-file"


def test_kafka_properties_problems_are_listed_with_the_others(tmp_path: Path) -> None:
    from pktstream.runtime.kafka import kafka_properties

    bad = tmp_path / "bad.properties"
    bad.write_text("security.protocol=SSL\nthis line has no separator\n")
    with pytest.raises(ConfigError) as ei:
        load_config(env={"PKTSTREAM_KAFKA_CONFIG": str(bad)}, flags={"payload_bytes": 999})
    assert any("bad.properties, line 2" in p for p in ei.value.problems)
    assert any("payload_bytes" in p for p in ei.value.problems)
    with pytest.raises(ConfigError) as ei:  # the consumers' and tools' way, every problem at once
        kafka_properties(["no-equals-sign"], str(tmp_path / "missing.properties"), environ={})
    assert len(ei.value.problems) == 2
    good = tmp_path / "ok.properties"
    good.write_text("a.b=file\nc=file\nsasl.oauthbearer.config=principal=x secret=y\n")
    assert kafka_properties(["a.b=flag"], None, environ={"PKTSTREAM_KAFKA_CONFIG": str(good),
                                                         "PKTSTREAM_KAFKA__C": "env"}) == \
        {"a.b": "flag", "c": "env", "sasl.oauthbearer.config": "principal=x secret=y"}


def test_properties_files_read_as_kafkas_own_tools_read_them(tmp_path: Path) -> None:
    """java.util.Properties: a byte order mark, continued lines, escapes, and a value kept to its
    end (a password may end in a space); a line without = or : is named by number, never shown."""
    from pktstream.runtime.kafka import read_properties

    f = tmp_path / "client.properties"
    f.write_bytes("\ufeffsasl.password = s3cr3t \nbootstrap.servers: a:9092,\\\n    b:9092\n"
                  "  # indented comment\nsasl.oauthbearer.config=scope=x\\u0041\\tend\na\\=b=c\n"
                  "sasl.username hunter2\n".encode())
    problems: list[str] = []
    assert read_properties(str(f), problems) == {
        "sasl.password": "s3cr3t ", "bootstrap.servers": "a:9092,b:9092", "sasl.oauthbearer.config": "scope=xA\tend",
        "a=b": "c"}
    assert problems == [f"Kafka properties file {f}, line 7: expected name=value"]  # not "hunter2"
    f.write_bytes(b"\xff\xfe")
    problems = []
    assert read_properties(str(f), problems) == {} and problems == [f"Kafka properties file {f}: not UTF-8 text"]


def test_a_bootstrap_flag_wins_over_the_properties_which_win_over_the_local_broker() -> None:
    from pktstream.runtime.kafka import client_config

    props = {"bootstrap.servers": "kafka.prod:9093", "security.protocol": "SSL"}
    assert client_config("flag:9092", props, default="127.0.0.1:9092")["bootstrap.servers"] == "flag:9092"
    assert client_config(None, props, default="127.0.0.1:9092")["bootstrap.servers"] == "kafka.prod:9093"
    assert client_config(None, {}, default="127.0.0.1:9092")["bootstrap.servers"] == "127.0.0.1:9092"


def test_every_secret_property_is_masked() -> None:
    from pktstream.runtime.kafka import masked

    conf = {"sasl.password": "p", "ssl.key.password": "p", "sasl.oauthbearer.config": "p",
            "sasl.oauthbearer.client.secret": "p", "sasl.jaas.config": "p", "ssl.key.pem": "p",
            "ssl.keystore.password": "p", "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
            "sasl.username": "u", "security.protocol": "SASL_SSL", "ssl.ca.location": "/ca.pem"}
    out = masked(conf)
    assert {k for k, v in out.items() if v == "***"} == {
        "sasl.password", "ssl.key.password", "sasl.oauthbearer.config", "sasl.oauthbearer.client.secret",
        "sasl.jaas.config", "ssl.key.pem", "ssl.keystore.password", "sasl.oauthbearer.token.endpoint.url"}
    assert (out["sasl.username"], out["ssl.ca.location"]) == ("u", "/ca.pem")


def test_kubernetes_service_links_are_not_settings() -> None:
    from pktstream.producer.config import service_link_variables

    links = {"PKTSTREAM_METRICS_SERVICE_HOST": "10.96.0.12", "PKTSTREAM_METRICS_SERVICE_PORT": "9464",
             "PKTSTREAM_METRICS_SERVICE_PORT_METRICS": "9464", "PKTSTREAM_METRICS_PORT": "tcp://10.96.0.12:9464",
             "PKTSTREAM_METRICS_PORT_9464_TCP": "tcp://10.96.0.12:9464",
             "PKTSTREAM_METRICS_PORT_9464_TCP_PROTO": "tcp", "PKTSTREAM_METRICS_PORT_9464_TCP_PORT": "9464",
             "PKTSTREAM_METRICS_PORT_9464_TCP_ADDR": "10.96.0.12", "PKTSTREAM_SERVICE_HOST": "fd00::12"}
    cfg = load_config(env={**links, "PKTSTREAM_TOPIC": "t1"})
    assert cfg.topic == "t1" and cfg.metrics_port == 9464  # the default, not the link's URL
    assert service_link_variables(links) == sorted(links)
    assert load_config(env={"PKTSTREAM_METRICS_PORT": "9500"}).metrics_port == 9500  # a setting stays one
    with pytest.raises(ConfigError, match="PKTSTREAM_METRIX_PORTT"):
        load_config(env={"PKTSTREAM_METRIX_PORTT": "1"})  # a typo is still an error


def test_host_id_reveals_nothing_of_the_machine_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from pktstream.producer import config

    mid = "0123456789abcdef0123456789abcdef"
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: mid + "\n" if str(self) == "/etc/machine-id"
                        else real(self, *a, **k))
    hid = config.default_host_id()
    host, digest = hid.rsplit("-", 1)
    assert host == socket.gethostname() and len(digest) == 12
    assert not any(mid[i : i + 6] in digest for i in range(len(mid) - 5))  # no run of the machine id in it
    assert hid == config.default_host_id()  # stable


def test_the_producer_takes_the_servers_of_its_properties_file_before_starting_a_broker() -> None:
    from pktstream.producer.cli import _bootstrap

    # a local broker would be started (and this call would need Java) if the properties were ignored
    assert _bootstrap(None, {"bootstrap.servers": "kafka.prod:9093"}, 1) == "kafka.prod:9093"
    assert _bootstrap("flag:9092", {"bootstrap.servers": "kafka.prod:9093"}, 1) == "flag:9092"


def test_an_upgraded_producer_takes_over_the_files_of_its_old_default_host_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool (replayed, not lost) and the run state (a crashed run still accounted for) named by
    the machine id's first digits move to the new host id's names; an explicit host id, or files
    already there under the new name, are left alone."""
    from pktstream.producer import config as config_mod
    from pktstream.producer.pipeline import ProducerRun

    mid = "0123456789abcdef0123456789abcdef"
    monkeypatch.setattr(config_mod, "_machine_id", lambda: mid)
    monkeypatch.setenv("PKTSTREAM_HOME", str(tmp_path))
    new, old = config_mod.default_host_id(), config_mod.legacy_host_id()
    assert old is not None and old.endswith("-0123456789ab") and new != old
    runs, spools = tmp_path / "runs", tmp_path / "spool"
    runs.mkdir()
    (spools / f"{old}-eth0-pktstream.packets").mkdir(parents=True)
    (spools / f"{old}-eth0-pktstream.packets" / "00000000000000000001-7.batch").write_bytes(b"batch")
    (runs / f"{old}-eth0.json").write_text('{"run_id": "r1"}')

    def take_over(host_id: str) -> None:
        run = ProducerRun.__new__(ProducerRun)
        run.cfg = ProducerConfig(interface="eth0", topic="pktstream.packets", host_id=host_id)
        run._take_over_legacy_files()

    take_over("explicit-name")  # a host id the operator chose: nothing moves
    assert (runs / f"{old}-eth0.json").exists()
    take_over(new)
    assert not (runs / f"{old}-eth0.json").exists()
    assert (runs / f"{new}-eth0.json").read_text() == '{"run_id": "r1"}'
    assert (spools / f"{new}-eth0-pktstream.packets" / "00000000000000000001-7.batch").read_bytes() == b"batch"
    (runs / f"{old}-eth0.json").write_text('{"run_id": "stale"}')  # the new name exists: kept as it is
    take_over(new)
    assert (runs / f"{new}-eth0.json").read_text() == '{"run_id": "r1"}'
