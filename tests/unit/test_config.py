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

