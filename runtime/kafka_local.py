"""The embedded default broker: Apache Kafka (KRaft) from Maven Central, one node or a local cluster.

``pktstream kafka up`` resolves ``org.apache.kafka:kafka_2.13`` and its runtime
dependencies with Maven into a cache, formats KRaft storage once and starts a
single combined broker+controller on loopback, then waits until it answers.
``pktstream kafka up --brokers N`` runs N such nodes (``LocalCluster``): clients on
ports P..P+N-1, the controller quorum on P+N..P+2N-1, each node a process and data
directory of its own; with three or more, topics default to replication factor 3
and ``min.insync.replicas`` 2, as on a production cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pktstream.runtime.errors import LocalKafkaError
from pktstream.runtime.kafka import read_properties
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


def default_dir(port: int) -> Path:
    """Where the local broker (or cluster) of a client port keeps its data unless told otherwise."""
    return state_home() / f"kafka-{port}"


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka's own Uuid makes them; never starting with '-' (read as an option)."""
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of a cluster's topics: 3 and 2 from three brokers
    on (one broker may fail and writes with acks=all go on), as many as there are below that."""
    rf = min(brokers, 3)
    return rf, max(1, rf - 1)


@dataclass
class LocalKafka:
    port: int = 9092
    data_dir: Path | None = None
    version: str = KAFKA_VERSION
    heap: str = "768m"
    # a node of a LocalCluster: its id and the controller ports of every node (ids 1..N); empty: one
    # node alone (its controller on port+1, a standalone quorum)
    node_id: int = 1
    quorum: tuple[int, ...] = ()
    cluster_id: str = ""
    # optional second listener with SASL/SCRAM-SHA-512 over TLS (self-signed certificate)
    sasl_port: int = 0
    sasl_user: str = "pktstream"
    sasl_password: str = ""
    # Kafka's StandardAuthorizer: only super users (sasl_user, and the local PLAINTEXT listener the
    # operator and the inter-broker traffic use) and what ACLs allow (runtime/roles.py)
    authorizer: bool = False
    # the broker's default max.message.bytes for topics; None: Kafka's own default (1 MB), which
    # tests use to show that no internal topic depends on a generous broker
    message_max_bytes: int | None = 64 << 20

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self.data_dir = default_dir(self.port)

    @property
    def dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def controller_port(self) -> int:
        return self.quorum[self.node_id - 1] if self.quorum else self.port + 1

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
        self._store_password()
        pw_file = str(tls / "store.password")  # keytool reads it: a password never in a command line
        common = ["-keystore", str(tls / "broker.p12"), "-storetype", "PKCS12", "-storepass:file", pw_file]
        for args in (
            ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
             "-dname", "CN=localhost", "-ext", "SAN=dns:localhost,ip:127.0.0.1", "-keypass:file", pw_file],
            ["-exportcert", "-rfc", "-alias", "broker", "-file", str(self.ca_file)],
        ):
            proc = subprocess.run(["keytool", *args, *common], capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise LocalKafkaError(f"keytool failed: {proc.stdout}{proc.stderr}")

    def _store_password(self) -> str:
        f = self.dir / "tls" / "store.password"
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            write_private(f, uuid.uuid4().hex)
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
        if self.authorizer:
            extra += ["authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                      f"super.users=User:ANONYMOUS;User:{self.sasl_user}",
                      "allow.everyone.if.no.acl.found=false"]
        rf, min_isr = replication(len(self.quorum) or 1)
        if self.quorum:
            extra.append("controller.quorum.voters=" + ",".join(
                f"{i}@127.0.0.1:{p}" for i, p in enumerate(self.quorum, start=1)))
        else:
            extra.append(f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}")
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={','.join(listeners)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={','.join(protocols)}",
            *extra,
            f"log.dirs={self.dir / 'data'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            "group.initial.rebalance.delay.ms=0",
            *([f"message.max.bytes={self.message_max_bytes}"] if self.message_max_bytes else []),
            "",
        ])

    def _java(self, main: str, *args: str) -> list[str]:
        # Java ignores TMPDIR: without this the JVM leaves its native libraries (liblz4-java-*.so)
        # in /tmp; in the data directory they go with it
        tmp = self.dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return [
            "java", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true", f"-Djava.io.tmpdir={tmp}",
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

    def accepting(self, port: int | None = None) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port or self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def up(self, timeout_s: float = 120.0) -> str:
        """Start the broker unless it already runs; return its bootstrap address."""
        if not (self.pid() is not None and self.accepting()):
            proc = self.start()
            self.wait_ready(proc, timeout_s)
        if self.sasl_port:
            if not self.sasl_password:
                raise LocalKafkaError("a SASL listener needs sasl_password")
            listening = time.monotonic() + 15  # the listeners open together, a moment after start
            while not self.accepting(self.sasl_port) and time.monotonic() < listening:
                time.sleep(0.2)
            if not self.accepting(self.sasl_port):
                raise LocalKafkaError(
                    f"the broker on port {self.port} runs without a SASL listener on {self.sasl_port} (started "
                    "without --acls?); stop it with pktstream kafka down and run the up again")
            # the SASL admin, through the local listener (never in a tool's argv); on every up, a
            # broker already running too (an earlier up may have stopped short of it); idempotent
            add_scram_user(self, self.sasl_user, self.sasl_password)
        return self.bootstrap

    def start(self) -> subprocess.Popen[bytes]:
        """Launch the node (storage formatted on first use) without waiting for it to answer."""
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
        write_private(props, self._properties())
        (self.dir / "log4j2.xml").write_text(_LOG4J2)
        if not (self.dir / "data" / "meta.properties").exists():
            # a node of a cluster: the static voters in its properties; alone: a standalone quorum
            quorum = [] if self.quorum else ["--standalone"]
            proc = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id or new_cluster_id(),
                           "-c", str(props), *quorum),
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
        log.info("kafka_starting", node=self.node_id, port=self.port, pid=proc2.pid, data_dir=str(self.dir))
        return proc2

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float, brokers: int = 1) -> None:
        """Until the node accepts and its metadata names ``brokers`` live brokers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise LocalKafkaError(f"the local broker (node {self.node_id}) exited with {proc.returncode}:\n{tail}")
            if self.accepting() and self._answers(brokers):
                log.info("kafka_up", bootstrap=self.bootstrap, node=self.node_id, pid=proc.pid)
                return
            time.sleep(0.5)
        raise LocalKafkaError(f"the local broker did not answer within {timeout_s:.0f}s; see {self.log_file}")

    def _answers(self, brokers: int = 1) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
        except Exception:
            return False
        return len(md.brokers) >= brokers

    def down(self, timeout_s: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after the timeout)."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        self._await_exit(pid, timeout_s)
        return True

    def kill(self) -> bool:
        """SIGKILL: the node dies as on a power cut (tests of failures)."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        self._await_exit(pid, 30.0)
        return True

    def _await_exit(self, pid: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            while self.pid() is not None:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        log.info("kafka_down", node=self.node_id, port=self.port, pid=pid)

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "node": self.node_id,
            "running": pid is not None,
            "pid": pid,
            "port": self.port,
            "bootstrap": self.bootstrap,
            "accepting": self.accepting(),
            "data_dir": str(self.dir),
            "log": str(self.log_file),
            "version": self.version,
            "jars": str(self.libs),
        }


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, from its first byte (created 0600, never chmod-ed after
    the secret is in it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file that existed keeps its mode through O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def add_scram_user(lk: LocalKafka, user: str, password: str, timeout_s: float = 30.0) -> None:
    """A SCRAM-SHA-512 user on a running broker (through its local PLAINTEXT listener)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": lk.bootstrap})
    up = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                      password.encode())
    for f in admin.alter_user_scram_credentials([up], request_timeout=timeout_s).values():
        f.result(timeout=timeout_s)
    if lk.sasl_port:  # the broker applies the credential from its metadata log: until a login works
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                AdminClient({**client_properties(lk, user, password), "log_level": 0}).list_topics(timeout=5)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise LocalKafkaError(f"the SASL user {user} cannot log in {timeout_s:.0f} s after it was "
                                          "created") from None
                time.sleep(0.5)


def client_properties(lk: LocalKafka, user: str, password: str) -> dict[str, str]:
    """What a client of the broker's SASL_SSL listener needs, as user."""
    return {"bootstrap.servers": lk.sasl_bootstrap, "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password,
            "ssl.ca.location": str(lk.ca_file)}


def setup_roles(lk: LocalKafka, apps: tuple[str, ...] = ("usage", "alerts"), packets: str = "pktstream.packets",
                stats: str = "pktstream.stats") -> dict[str, Path]:
    """A user per role (runtime/roles.py) with the role's ACLs, on a broker with the authorizer:
    ``pktstream-producer``, ``pktstream-<app>`` for each app (its default app id, output topic
    ``pktstream.<app>``),
    ``pktstream-reader`` (the packet, stats and apps' output topics). Each user's client settings
    are written to ``<data dir>/credentials/<role>.properties`` (mode 0600: a file for
    ``--kafka-config``); returns those paths by role."""
    from pktstream.runtime import roles

    creds = lk.dir / "credentials"
    creds.mkdir(mode=0o700, parents=True, exist_ok=True)
    outputs = tuple(f"pktstream.{a}" for a in apps)
    plan: dict[str, list[Any]] = {
        "producer": roles.acls("producer", "User:pktstream-producer", packets=packets, stats=stats),
        "reader": roles.acls("reader", "User:pktstream-reader", topics=(packets, stats, *outputs)),
        **{a: roles.acls("app", f"User:pktstream-{a}", packets=packets, app=f"pktstream-{a}",
                         output=f"pktstream.{a}") for a in apps},
    }
    out: dict[str, Path] = {}
    for role, bindings in plan.items():
        user = f"pktstream-{role}"
        path = creds / f"{role}.properties"
        old = read_properties(str(path), []) if path.exists() else {}
        password = old.get("sasl.password") or uuid.uuid4().hex
        add_scram_user(lk, user, password)
        roles.grant({"bootstrap.servers": lk.bootstrap}, bindings)
        props = {k: v for k, v in client_properties(lk, user, password).items() if k != "bootstrap.servers"}
        write_private(path, f"# pktstream role {role}: --kafka-config {path} --bootstrap-servers "
                      f"{lk.sasl_bootstrap}\n" + "".join(f"{k}={v}\n" for k, v in props.items()))
        out[role] = path
    return out


@dataclass
class LocalCluster:
    """N local KRaft nodes, each broker and controller: clients on ports ``port``..``port``+N-1, the
    controller quorum on the N ports after those. One node is exactly ``LocalKafka`` (same directory,
    same ports), so ``--brokers 1`` is the single broker everything else starts."""

    port: int = 9092
    brokers: int = 1
    data_dir: Path | None = None
    heap: str = "768m"

    def __post_init__(self) -> None:
        if self.brokers < 1:
            raise LocalKafkaError(f"--brokers {self.brokers}: a cluster has at least one broker")
        if self.data_dir is None:
            self.data_dir = default_dir(self.port)

    @property
    def dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def _manifest(self) -> Path:
        return self.dir / "cluster.json"

    @classmethod
    def existing(cls, port: int, data_dir: Path | None = None) -> LocalCluster:
        """The cluster whose data lives for this port: its size from its manifest, else one broker."""
        c = cls(port=port, data_dir=data_dir)
        with contextlib.suppress(OSError, ValueError, KeyError):
            c.brokers = int(json.loads(c._manifest.read_text())["brokers"])
        return c

    def _cluster_id(self) -> str:
        """The id every node's storage is formatted with (kept in the manifest)."""
        try:
            doc = json.loads(self._manifest.read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("brokers", self.brokers) != self.brokers:
            raise LocalKafkaError(
                f"a {doc['brokers']}-broker cluster has its data in {self.dir}; name that size with "
                f"--brokers {doc['brokers']}, or stop it and remove the directory first"
            )
        if "cluster_id" not in doc:
            doc = {"brokers": self.brokers, "cluster_id": new_cluster_id()}
            self.dir.mkdir(parents=True, exist_ok=True)
            self._manifest.write_text(json.dumps(doc) + "\n")
        return str(doc["cluster_id"])

    @property
    def nodes(self) -> list[LocalKafka]:
        if self.brokers == 1:
            return [LocalKafka(port=self.port, data_dir=self.dir, heap=self.heap)]
        quorum = tuple(self.port + self.brokers + i for i in range(self.brokers))
        cid = self._cluster_id()
        return [LocalKafka(port=self.port + i, data_dir=self.dir / f"node-{i + 1}", heap=self.heap, node_id=i + 1,
                           quorum=quorum, cluster_id=cid) for i in range(self.brokers)]

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def up(self, timeout_s: float = 180.0) -> str:
        """Start every node that does not run (all of them the first time, a dead one later) and wait
        until each answers with the whole cluster in its metadata; return the bootstrap list."""
        if self._manifest.exists():
            self._cluster_id()  # a cluster of another size lives here: say so
        if self.brokers > 1 and (self.dir / "data" / "meta.properties").exists():
            raise LocalKafkaError(
                f"a single broker has its data in {self.dir}; stop it and remove the directory, or choose "
                "another --port for the cluster"
            )
        nodes = self.nodes
        started = [(n, n.start()) for n in nodes if not (n.pid() is not None and n.accepting())]
        for n, proc in started:  # a node answers only once a majority of the quorum is up
            n.wait_ready(proc, timeout_s, brokers=self.brokers)
        return self.bootstrap

    def down(self, timeout_s: float = 60.0) -> list[int]:
        """Stop every running node (SIGTERM, then SIGKILL after the timeout); the ids of those stopped.
        All are told at once: one by one, the last nodes wait for a controller quorum that is gone."""
        running = [(n, pid) for n in self.nodes if (pid := n.pid()) is not None]
        for _n, pid in running:
            os.kill(pid, signal.SIGTERM)
        for n, pid in running:
            n._await_exit(pid, timeout_s)
        return [n.node_id for n, _pid in running]

    def status(self) -> list[dict[str, object]]:
        return [n.status() for n in self.nodes]

    def in_sync(self, timeout_s: float = 120.0) -> None:
        """Wait until no partition is under-replicated (every replica back in its ISR): what a rolling
        restart waits for before it stops the next broker."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        lagging: list[str] = []
        while time.monotonic() < deadline:
            try:
                md = admin.list_topics(timeout=5)
            except Exception:
                time.sleep(0.5)
                continue
            lagging = [f"{t}[{p}]" for t, tm in md.topics.items() for p, pm in tm.partitions.items()
                       if len(pm.isrs) < len(pm.replicas) or pm.leader < 0]
            if len(md.brokers) == self.brokers and not lagging:
                return
            time.sleep(0.5)
        raise LocalKafkaError(f"partitions still under-replicated after {timeout_s:.0f}s: {lagging[:10]}")
