"""The embedded default broker: Apache Kafka (KRaft, one node) from Maven Central.

``pktstream kafka up`` resolves ``org.apache.kafka:kafka_2.13`` and its runtime
dependencies with Maven into a cache, formats KRaft storage once and starts a
single combined broker+controller on loopback, then waits until it answers.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from pktstream.runtime.errors import LocalKafkaError
from pktstream.runtime.paths import state_home

log = structlog.get_logger("pktstream.kafka_local")

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.pktstream</groupId><artifactId>local-kafka</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <!-- routes the broker's slf4j logging to log4j2 and so to broker.log -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """<Configuration status="warn">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="info"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="org.apache.kafka.storage" level="warn"/></Loggers>
</Configuration>
"""


def _cache_home() -> Path:
    base = os.environ.get("PKTSTREAM_HOME")
    if base:
        return Path(base) / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pktstream"


@dataclass
class LocalKafka:
    port: int = 9092
    data_dir: Path | None = None
    version: str = KAFKA_VERSION
    heap: str = "768m"
    # optional second listener with SASL/SCRAM-SHA-512 over TLS (self-signed certificate)
    sasl_port: int = 0
    sasl_user: str = "pktstream"
    sasl_password: str = ""

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self.data_dir = state_home() / f"kafka-{self.port}"

    @property
    def dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def libs(self) -> Path:
        return _cache_home() / f"kafka-{self.version}" / "libs"

    @property
    def pid_file(self) -> Path:
        return self.dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "broker.log"

    # -- jars ---------------------------------------------------------------
    def resolve(self) -> Path:
        """Resolve the broker's jars from Maven Central into the cache (once)."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise LocalKafkaError(f"{tool} is not installed; the README's set-up installs Java and Maven")
        work = self.libs.parent
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_POM.format(kafka=self.version, log4j=LOG4J_VERSION))
        log.info("kafka_resolve_started", version=self.version, into=str(self.libs))
        proc = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.libs}", "-DincludeScope=runtime"],
            capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            raise LocalKafkaError(
                f"resolving Apache Kafka {self.version} from Maven Central failed:\n{proc.stdout[-2000:]}"
                f"{proc.stderr[-2000:]}"
            )
        marker.write_text(self.version)
        log.info("kafka_resolved", version=self.version, jars=len(list(self.libs.glob("*.jar"))))
        return self.libs

    # -- lifecycle ----------------------------------------------------------
    @property
    def ca_file(self) -> Path:
        """The PEM certificate a client must trust to reach the SASL_SSL listener."""
        return self.dir / "tls" / "ca.pem"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def _ensure_tls(self) -> None:
        tls = self.dir / "tls"
        if (tls / "broker.p12").exists():
            return
        tls.mkdir(parents=True, exist_ok=True)
        pw = self._store_password()
        common = ["-keystore", str(tls / "broker.p12"), "-storetype", "PKCS12", "-storepass", pw]
        for args in (
            ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
             "-dname", "CN=localhost", "-ext", "SAN=dns:localhost,ip:127.0.0.1", "-keypass", pw],
            ["-exportcert", "-rfc", "-alias", "broker", "-file", str(self.ca_file)],
        ):
            proc = subprocess.run(["keytool", *args, *common], capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise LocalKafkaError(f"keytool failed: {proc.stdout}{proc.stderr}")

    def _store_password(self) -> str:
        f = self.dir / "tls" / "store.password"
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(uuid.uuid4().hex)
            f.chmod(0o600)
        return f.read_text().strip()

    def _properties(self) -> str:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        extra: list[str] = []
        if self.sasl_port:
            listeners.append(f"SASL_SSL://127.0.0.1:{self.sasl_port}")
            protocols.append("SASL_SSL:SASL_SSL")
            pw = self._store_password()
            extra = [
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                f"ssl.keystore.location={self.dir / 'tls' / 'broker.p12'}",
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.password={pw}",
                f"ssl.key.password={pw}",
            ]
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={','.join(listeners)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={','.join(protocols)}",
            *extra,
            f"log.dirs={self.dir / 'data'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "message.max.bytes=67108864",
            "",
        ])

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.xml'}",
            "-cp", f"{self.libs}/*", main, *args,
        ]

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"kafka.Kafka" in cmd else None

    def accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def up(self, timeout_s: float = 120.0) -> str:
        """Start the broker unless it already runs; return its bootstrap address."""
        if self.pid() is not None and self.accepting():
            return self.bootstrap
        if self.pid() is None and self.accepting():
            raise LocalKafkaError(
                f"port {self.port} is taken by another process; name that broker with --bootstrap-servers "
                "or choose another local port"
            )
        self.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.sasl_port:
            if not self.sasl_password:
                raise LocalKafkaError("a SASL listener needs sasl_password")
            self._ensure_tls()
        props = self.dir / "server.properties"
        props.write_text(self._properties())
        props.chmod(0o600)
        (self.dir / "log4j2.xml").write_text(_LOG4J2)
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # as Kafka's own Uuid: '-' would read as an option
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            scram = ["--add-scram", f"SCRAM-SHA-512=[name={self.sasl_user},password={self.sasl_password}]"] \
                if self.sasl_port else []
            proc = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                           "--standalone", *scram),
                capture_output=True, text=True, timeout=180,
            )
            if proc.returncode != 0:
                raise LocalKafkaError(f"formatting KRaft storage failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        with open(self.log_file, "ab") as out:
            proc2 = subprocess.Popen(
                self._java("kafka.Kafka", str(props)),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(proc2.pid))
        log.info("kafka_starting", port=self.port, pid=proc2.pid, data_dir=str(self.dir))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc2.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise LocalKafkaError(f"the local broker exited with {proc2.returncode}:\n{tail}")
            if self.accepting() and self._answers():
                log.info("kafka_up", bootstrap=self.bootstrap, pid=proc2.pid)
                return self.bootstrap
            time.sleep(0.5)
        raise LocalKafkaError(f"the local broker did not answer within {timeout_s:.0f}s; see {self.log_file}")

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except Exception:
            return False
        return bool(md.brokers)

    def down(self, timeout_s: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after the timeout)."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            while self.pid() is not None:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        log.info("kafka_down", port=self.port, pid=pid)
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "running": pid is not None,
            "pid": pid,
            "bootstrap": self.bootstrap,
            "accepting": self.accepting(),
            "data_dir": str(self.dir),
            "log": str(self.log_file),
            "version": self.version,
            "jars": str(self.libs),
        }
