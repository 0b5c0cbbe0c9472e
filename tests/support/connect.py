"""A Kafka Connect worker as a user of the ecosystem runs one: Apache Kafka's own
``connect-standalone`` (org.apache.kafka:connect-runtime and connect-file from Maven Central) with
Apicurio's registry-aware Avro converter (io.apicurio:apicurio-registry-utils-converter, also from
Maven Central; Confluent's converter is not on Maven Central), sinking topics to files with
FileStreamSinkConnector, one line per record (the record as Connect's Struct prints it)."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from pktstream.runtime.kafka_local import KAFKA_VERSION, LOG4J_VERSION, _cache_home

CONVERTER_VERSION = "2.6.13.Final"
_CACHE = "connect-{kafka}-apicurio-{converter}-2"  # (-2: the jars of the slf4j 1 binding)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.pktstream</groupId><artifactId>connect-test</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-file</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>io.apicurio</groupId><artifactId>apicurio-registry-utils-converter</artifactId>
      <version>{converter}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def connect_jars() -> Path:
    """The worker's jars, resolved from Maven Central into the cache once."""
    home = _cache_home() / _CACHE.format(kafka=KAFKA_VERSION, converter=CONVERTER_VERSION)
    libs = home / "libs"
    if (home / ".complete").exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, converter=CONVERTER_VERSION, log4j=LOG4J_VERSION))
    p = subprocess.run(["mvn", "-B", "-q", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
                        f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"resolving Kafka Connect from Maven Central failed:\n{p.stdout[-2000:]}" \
        f"{p.stderr[-2000:]}"
    (home / ".complete").write_text("ok")
    return libs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sink_to_files(bootstrap: str, ccompat_url: str, sinks: dict[str, tuple[Path, int]], work: Path,
                  timeout_s: float = 180) -> dict[str, list[str]]:
    """Runs a standalone worker with one FileStreamSinkConnector per topic (``sinks``: topic -> (file,
    lines to wait for)), values read with Apicurio's AvroConverter in its Confluent-compatible mode
    (the 0x00 and 4-byte id of the wire format), committed records only; stops it once every file
    has its lines (or the time is up) and gives each file's lines."""
    libs = connect_jars()
    registry_v2 = ccompat_url.replace("/apis/ccompat/v7", "/apis/registry/v2")
    (work / "plugins").mkdir(exist_ok=True)
    worker = work / "worker.properties"
    worker.write_text("\n".join([
        f"bootstrap.servers={bootstrap}",
        "key.converter=org.apache.kafka.connect.converters.ByteArrayConverter",
        "value.converter=io.apicurio.registry.utils.converter.AvroConverter",
        f"value.converter.apicurio.registry.url={registry_v2}",
        "value.converter.apicurio.registry.as-confluent=true",
        "value.converter.apicurio.registry.use-id=contentId",
        "value.converter.apicurio.registry.headers.enabled=false",
        f"offset.storage.file.filename={work / 'connect.offsets'}",
        f"listeners=http://127.0.0.1:{_free_port()}",
        "consumer.isolation.level=read_committed",
        "consumer.auto.offset.reset=earliest",
        f"plugin.path={work / 'plugins'}",  # empty: the converter and the sink are on the classpath
        "offset.flush.interval.ms=500",  # the file sink flushes its file when offsets are committed
    ]) + "\n")
    connectors = []
    for i, (topic, (path, _n)) in enumerate(sinks.items()):
        c = work / f"sink{i}.properties"
        c.write_text(f"name=sink-{i}\nconnector.class=org.apache.kafka.connect.file.FileStreamSinkConnector\n"
                     f"tasks.max=1\ntopics={topic}\nfile={path}\n")
        connectors.append(str(c))
    log = work / "connect.log"
    with open(log, "w") as out:
        p = subprocess.Popen(["java", "-Xmx384m", f"-Djava.io.tmpdir={work}", "-Dlog4j2.level=INFO", "-cp", f"{libs}/*",
                              "org.apache.kafka.connect.cli.ConnectStandalone", str(worker), *connectors],
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and p.poll() is None:
            if all(path.exists() and len(path.read_text().splitlines()) >= n for path, n in sinks.values()):
                break
            time.sleep(0.5)
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    assert not errors, "\n".join(errors[:10])
    return {t: path.read_text().splitlines() if path.exists() else [] for t, (path, _n) in sinks.items()}


def struct_fields(line: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Top-level fields of a record as Connect's Struct.toString prints it (Struct{a=1,b=x,...})."""
    out = []
    for n in names:
        m = re.search(rf"(?:Struct\{{|,){n}=([^,}}]*)", line)
        assert m, f"{n} not in {line[:200]}"
        out.append(m.group(1))
    return tuple(out)
