"""Test hosts: network namespaces joined to this host by veth pairs; frame sending."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pktstream.runtime.kafka_local import LocalKafka

# every namespace and interface the tests create starts with this (4 characters; another value lets
# a developer's run go on beside CI's without either removing the other's links)
PREFIX = os.environ.get("PKTSTREAM_TEST_NETNS_PREFIX", "pstt")[:4]
NET16 = os.environ.get("PKTSTREAM_TEST_NET16", "10.230")  # the test hosts' addresses: NET16.<index>.1 and .2


@contextmanager
def running_broker(port: int, name: str, **kw: Any) -> Iterator[LocalKafka]:
    """A real single-node broker of its own, in a fresh data directory, stopped afterwards."""
    lk = LocalKafka(port=port, data_dir=Path(tempfile.mkdtemp(prefix=f"pktstream-test-{name}-")), **kw)
    lk.down()  # one left by an interrupted run
    lk.up()
    try:
        yield lk
    finally:
        lk.down()


Message = tuple[bytes | None, bytes, dict[str, bytes]]


def split_by_host(bootstrap: str, topic: str, hosts: list[str], partitions: int = 2) -> None:
    """Each capture host's messages of a packet topic copied alone into a topic of its own,
    ``{topic}.{host}`` (the message key is the producer's host id), as its producer wrote them."""
    from confluent_kafka import Producer

    from pktstream.runtime.kafka import ensure_topic

    # (as large messages as the producers wrote: a burst's batch can pass librdkafka's 1 MB default)
    prod = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "message.max.bytes": 64 << 20})
    # read until two reads a second apart agree: what producers just stopped wrote may take a moment
    # to be readable (a partial first read once left a host's topic without its first batches)
    messages = read_messages(bootstrap, topic)
    for _ in range(20):
        time.sleep(1.0)
        again = read_messages(bootstrap, topic)
        if len(again) == len(messages):
            break
        messages = again
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for name in hosts:
        out = f"{topic}.{name}"
        ensure_topic({"bootstrap.servers": bootstrap}, out, partitions, config={"max.message.bytes": str(64 << 20)})
        deadline = time.monotonic() + 30
        while True:  # a topic just created has its partitions' leaders a moment later
            md = prod.list_topics(out, timeout=10).topics.get(out)
            if md is not None and md.error is None and len(md.partitions) == partitions \
                    and all(p.leader >= 0 for p in md.partitions.values()):
                break
            assert time.monotonic() < deadline, f"{out}: no leaders"
            time.sleep(0.2)
        # one message at a time, each delivered before the next (in order: the consumers judge lateness
        # by a partition's order), again when the broker refused it (a topic just created can refuse one)
        for k, v, hdrs in messages:
            if k != name.encode():
                continue
            for attempt in range(5):
                errors.clear()
                prod.produce(out, v, key=k, headers=hdrs, on_delivery=delivered)
                assert prod.flush(60) == 0
                if not errors:
                    break
                assert attempt < 4, errors
                time.sleep(1.0)
    for name in hosts:
        want = sum(k == name.encode() for k, _v, _h in messages)
        assert want and len(read_messages(bootstrap, f"{topic}.{name}")) == want, name


def read_messages(bootstrap: str, topic: str, timeout_s: float = 60, settled: bool = True) -> list[Message]:
    """(key, value, headers) of every committed message of a topic, partition by partition, up to
    its end now (read_committed, librdkafka's default: what transactional writers committed).

    Read once every transaction written so far is decided: a transaction's commit returns once its
    coordinator has logged it, and the markers that make its messages readable reach the
    partitions a moment later (seconds, when a broker has just died), so a read_committed reader
    that stopped at the first end-of-partition could miss a transaction its writer saw committed.
    ``settled=False`` reads what is readable now (a writer just killed holds its transaction open
    until it is fenced or times out)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    deadline = time.monotonic() + timeout_s  # one for the whole read, settling included
    conf = {"bootstrap.servers": bootstrap, "enable.auto.commit": False}  # (close() commits nothing)
    c = Consumer({**conf, "group.id": f"t-read-{secrets.token_hex(3)}", "enable.partition.eof": True,
                  "isolation.level": "read_committed"})
    ends = Consumer({**conf, "group.id": f"t-read-{secrets.token_hex(3)}", "isolation.level": "read_uncommitted"})
    try:
        parts: list[int] = []
        while not parts:  # a broker just restarted may answer without the topic's partitions for a moment
            md = c.list_topics(topic, timeout=10).topics.get(topic)
            parts = list(md.partitions) if md is not None and md.error is None else []
            assert parts or time.monotonic() < deadline, f"{topic}: no partitions within {timeout_s} s"
            if not parts:
                time.sleep(0.5)

        def marks(consumer: Any) -> dict[int, int] | None:
            """Each partition's end as the consumer's isolation level sees it (None: a broker just
            restarted does not answer yet; asked again)."""
            try:
                return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                        for p in parts}
            except KafkaException:
                assert time.monotonic() < deadline, f"{topic}: no watermarks within {timeout_s} s"
                time.sleep(0.5)
                return None

        # every transaction written so far decided: the last stable offset (the high watermark a
        # read_committed client is told) has reached the high watermark
        hw = None
        while settled and hw is None:
            hw = marks(ends)
        while settled and hw is not None:
            lso = marks(c)
            if lso is not None and all(lso[p] >= hw[p] for p in parts):
                break
            assert time.monotonic() < deadline, f"{topic}: transactions still open (stable {lso}, written {hw})"
            time.sleep(0.2)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Message] = []
        eof: set[int] = set()
        while len(eof) < len(parts) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition() or 0)
                continue
            out.append((m.key(), m.value() or b"", dict(m.headers() or [])))
        assert len(eof) == len(parts), f"{topic}: not read to its end within {timeout_s} s"
        return out
    finally:
        ends.close()
        c.close()


def peak_rss_mb(pid: int) -> int:
    """A running process's peak resident memory (VmHWM of its own address space; 0 once it has
    exited). Not wait4's ru_maxrss: exec keeps the parent's memory at the fork in that figure, so a
    child of a large pytest would report pytest's size."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) // 1024
    except (OSError, IndexError, ValueError):
        return 0


def wait_peak_rss_mb(proc: subprocess.Popen[Any], timeout_s: float | None = None, every_s: float = 0.02) -> int:
    """Wait for a process to exit (killed past ``timeout_s``: AssertionError) and give its peak
    resident memory in MB, read every ``every_s`` while it runs (peak_rss_mb)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    peak = 0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid))
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{proc.args!r:.200} did not finish within {timeout_s} s")
        time.sleep(every_s)
    return peak


def require(cond: bool, why: str) -> None:
    """Skip on a developer machine; fail in CI (PKTSTREAM_TEST_REQUIRE_ALL=1)."""
    if cond:
        return
    if os.environ.get("PKTSTREAM_TEST_REQUIRE_ALL") == "1":
        pytest.fail(f"prerequisite missing (tests may not skip here): {why}")
    pytest.skip(why)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


@dataclass
class NetnsHost:
    """A namespace with one veth end; the other end (host_if) stays on this host."""

    ns: str
    host_if: str
    peer_if: str
    host_ip: str
    peer_ip: str
    host_mac: str
    peer_mac: str

    @property
    def ifindex(self) -> int:
        return socket.if_nametoindex(self.host_if)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], check=check, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def send_frames(self, frames: Iterable[bytes], pause_s: float = 0.0) -> None:
        """Send raw Ethernet frames out of the namespace's veth end (they arrive on host_if),
        ``pause_s`` apart."""
        with tempfile.NamedTemporaryFile(delete=False) as f:
            for fr in frames:
                f.write(struct.pack("<I", len(fr)) + fr)
            path = f.name
        try:
            helper = Path(__file__).with_name("send_frames.py")
            self.run(sys.executable, str(helper), self.peer_if, path, str(pause_s), timeout=120)
        finally:
            os.unlink(path)


def create_host(index: int = 0, ipv6: bool = False) -> NetnsHost:
    tag = secrets.token_hex(3)
    ns = f"{PREFIX}-{tag}"
    host_if = f"{PREFIX}{tag}h"
    peer_if = f"{PREFIX}{tag}p"
    host_ip = f"{NET16}.{index}.1"
    peer_ip = f"{NET16}.{index}.2"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        sh("ip", "link", "set", peer_if, "netns", ns)
        if not ipv6:  # keep the link quiet: no router solicitations, MLD, DAD
            sh("sysctl", "-qw", f"net.ipv6.conf.{host_if}.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{peer_if}.disable_ipv6=1")
        # crafted frames aimed at other addresses must die here, never be forwarded off the machine
        sh("sysctl", "-qw", f"net.ipv4.conf.{host_if}.forwarding=0")
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{peer_ip}/24", "dev", peer_if)
        sh("ip", "-n", ns, "link", "set", peer_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        host_mac = Path(f"/sys/class/net/{host_if}/address").read_text().strip()
        peer_mac = sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{peer_if}/address").stdout.strip()
    except BaseException:
        destroy_host(ns, host_if)
        raise
    return NetnsHost(ns, host_if, peer_if, host_ip, peer_ip, host_mac, peer_mac)


PIN_ROOT = Path("/sys/fs/bpf/pktstream")


def destroy_host(ns: str, host_if: str) -> None:
    sh("ip", "link", "del", host_if, check=False)
    sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(PIN_ROOT / host_if, ignore_errors=True)  # counters a producer pinned for it


def cleanup_stale() -> None:
    """Remove namespaces and links left by an interrupted earlier run."""
    out = sh("ip", "-o", "link", "show", check=False).stdout
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            sh("ip", "link", "del", name, check=False)
    for pinned in PIN_ROOT.glob(f"{PREFIX}*"):
        shutil.rmtree(pinned, ignore_errors=True)
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX + "-"):
            sh("ip", "netns", "del", name, check=False)
