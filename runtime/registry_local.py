"""A local schema registry for development and tests: Apicurio Registry from Maven Central, its
Confluent-compatible API (``/apis/ccompat/v7``) on 127.0.0.1, started and stopped the way the local
broker is (``pktstream registry up|down|status``).

Apicurio 3.0.9 runs on the Java 17 the set-up installs (3.1 and later need Java 21). Its schemas are
kept in an H2 database file under the data directory, so ids stay what they were across restarts
(messages name them). Production points at any Confluent-compatible registry instead
(``--schema-registry URL``; runtime/registry.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import structlog

from pktstream.runtime.errors import PktstreamError
from pktstream.runtime.kafka_local import _cache_home
from pktstream.runtime.paths import state_home
from pktstream.runtime.registry import CCOMPAT, DEFAULT_PORT

log = structlog.get_logger("pktstream.registry")

APICURIO_VERSION = "3.0.9"
_ARTIFACT = "io.apicurio:apicurio-registry-app:{v}:tar.gz:all"


class LocalRegistryError(PktstreamError):
    pass


def default_dir(port: int) -> Path:
    return state_home() / f"registry-{port}"


@dataclass
class LocalRegistry:
    port: int = DEFAULT_PORT
    data_dir: Path | None = None
    version: str = APICURIO_VERSION
    heap: str = "384m"

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self.data_dir = default_dir(self.port)

    @property
    def dir(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir

    @property
    def url(self) -> str:
        """What clients name: the Confluent-compatible API."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT}"

    @property
    def home(self) -> Path:
        return _cache_home() / f"apicurio-{self.version}"

    @property
    def jar(self) -> Path:
        return self.home / f"apicurio-registry-app-{self.version}-runner.jar"

    @property
    def pid_file(self) -> Path:
        return self.dir / "registry.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "registry.log"

    def resolve(self) -> Path:
        """Apicurio's distribution from Maven Central (through Maven, so its mirrors and proxies
        apply), unpacked into the cache once."""
        marker = self.home / ".complete"
        if marker.exists() and self.jar.exists():
            return self.jar
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise LocalRegistryError(f"{tool} is not installed; the README's set-up installs Java and Maven")
        self.home.mkdir(parents=True, exist_ok=True)
        log.info("registry_resolve_started", version=self.version, into=str(self.home))
        proc = subprocess.run(
            ["mvn", "-B", "-q", "dependency:copy", f"-Dartifact={_ARTIFACT.format(v=self.version)}",
             f"-DoutputDirectory={self.home}", "-Dmdep.stripVersion=false"],
            capture_output=True, text=True, timeout=900, cwd=self.home,
        )
        tgz = self.home / f"apicurio-registry-app-{self.version}-all.tar.gz"
        if proc.returncode != 0 or not tgz.exists():
            raise LocalRegistryError(f"fetching Apicurio Registry {self.version} from Maven Central failed:\n"
                                     f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        with tarfile.open(tgz) as t:
            t.extractall(self.home, filter="data")
        tgz.unlink()
        if not self.jar.exists():
            raise LocalRegistryError(f"Apicurio Registry {self.version}'s distribution has no {self.jar.name}")
        marker.write_text(self.version)
        log.info("registry_resolved", version=self.version, jar=str(self.jar))
        return self.jar

    def _command(self) -> list[str]:
        tmp = self.dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return [
            "java", f"-Xmx{self.heap}", "-Djava.awt.headless=true", f"-Djava.io.tmpdir={tmp}",
            f"-Dvertx.cacheDirBase={tmp / 'vertx-cache'}",  # (Vert.x's default is /tmp/vertx-cache)
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.management.enabled=false",  # else a second server on port 9000
            "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=h2",
            f"-Dapicurio.datasource.url=jdbc:h2:file:{self.dir / 'db' / 'registry'}",
            "-Dapicurio.datasource.username=sa", "-Dapicurio.datasource.password=sa",
            "-jar", str(self.jar),
        ]

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"apicurio-registry-app" in cmd else None

    def accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/subjects", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def up(self, timeout_s: float = 120.0) -> str:
        """Start the registry unless it runs; its URL once it answers."""
        if self.pid() is not None and self.answers():
            return self.url
        if self.pid() is None and self.accepting():
            raise LocalRegistryError(f"port {self.port} is taken by another process; name that registry with "
                                     "--schema-registry or choose another port")
        self.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        proc: subprocess.Popen[bytes] | None = None
        if self.pid() is None:
            with open(self.log_file, "ab") as out:
                proc = subprocess.Popen(self._command(), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            self.pid_file.write_text(str(proc.pid))
            log.info("registry_starting", port=self.port, pid=proc.pid, data_dir=str(self.dir))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise LocalRegistryError(f"the local registry exited with {proc.returncode}:\n{tail}")
            if self.answers():
                log.info("registry_up", url=self.url, pid=self.pid())
                return self.url
            time.sleep(0.5)
        raise LocalRegistryError(f"the local registry did not answer within {timeout_s:.0f}s; see {self.log_file}")

    def down(self, timeout_s: float = 30.0) -> bool:
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
        log.info("registry_down", port=self.port, pid=pid)
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {"running": pid is not None, "pid": pid, "port": self.port, "url": self.url,
                "answering": pid is not None and self.answers(), "data_dir": str(self.dir),
                "log": str(self.log_file), "version": self.version}
