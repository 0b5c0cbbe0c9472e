"""``pktstream activity`` against real traffic and the real broker: every conversation's record
compared with independent meters on the same capture (tshark's conversation statistics for packets
and bytes each way, the ``communityid`` package for Community IDs, OCSF's own schema), and a replay
equal to the first run."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.support.apps import HTTP_PORT, TLS_PORT, run_activity, servers
from tests.support.communityid_ref import reference as cid  # the PyPI package's
from tests.support.helpers import NetnsHost, read_messages
from tests.support.ocsf import validator
from tests.support.producer_proc import PKTSTREAM, ProducerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.kafka]

NOWHERE = "198.51.100.77"  # a SYN to it gets no answer: the host does not forward


def free_port(addr: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


@contextmanager
def side_servers(addr: str) -> Iterator[dict[str, int]]:
    """On this host: a server that resets each connection, a UDP echo and a TCP echo (ports the OS
    picks, on the test host's address)."""
    stop = threading.Event()
    rst = socket.create_server((addr, 0))
    echo = socket.create_server((addr, 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, 0))
    udp.settimeout(0.2)

    def resetter() -> None:
        while not stop.is_set():
            try:
                c, _ = rst.accept()
            except OSError:
                return
            c.recv(100)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()  # SO_LINGER 0: a RST

    def echoer() -> None:
        while not stop.is_set():
            try:
                c, _ = echo.accept()
            except OSError:
                return
            with c:
                while data := c.recv(4096):
                    c.sendall(data)

    def udp_echo() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                data, peer = udp.recvfrom(4096)
                udp.sendto(data.upper(), peer)

    threads = [threading.Thread(target=f, daemon=True) for f in (resetter, echoer, udp_echo)]
    for t in threads:
        t.start()
    try:
        yield {"reset_port": rst.getsockname()[1], "echo_port": echo.getsockname()[1],
               "udp_port": udp.getsockname()[1]}
    finally:
        stop.set()
        for s in (rst, echo):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        udp.close()
        for t in threads:
            t.join(5)


CONV = re.compile(r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(\d+) ([\d,]+) (\w+)\s+(\d+) ([\d,]+) (\w+)")


def tshark_conversations(pcap: Path) -> dict[tuple[str, int, str, int, str], tuple[int, int, int, int]]:
    """tshark's conversation statistics (-z conv,tcp and -z conv,udp): (A, port, B, port, proto) ->
    (frames A->B, bytes A->B, frames B->A, bytes B->A)."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-q", "-z", "conv,tcp", "-z", "conv,udp"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    convs = {}
    proto = ""
    for line in out.splitlines():
        if line.startswith(("TCP Conversations", "UDP Conversations")):
            proto = line[:3].lower()
        m = CONV.match(line)
        if m:
            a, ap, b, bp, fin, bin_, uin, fout, bout, uout = m.groups()
            assert uin == uout == "bytes", f"keep the test's conversations under tshark's kB rounding: {line}"
            convs[(a, int(ap), b, int(bp), proto)] = (int(fout), int(bout.replace(",", "")), int(fin),
                                                      int(bin_.replace(",", "")))
    return convs


def tshark_icmp(pcap: Path) -> list[tuple[str, str, int, int]]:
    """Every ICMP frame as tshark reads it: source, destination, type, frame length."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "icmp", "-T", "fields", "-E", "occurrence=f",  # not the
                          "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type", "-e", "frame.len"],  # quoted header
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [(a, b, int(t), int(n)) for a, b, t, n in (line.split("\t") for line in out.splitlines() if line)]


def tshark_times(pcap: Path, cport: int, sport: int) -> list[float]:
    """The capture times of one TCP conversation's frames, as tshark reads them."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", f"tcp.port == {cport} && tcp.port == {sport}", "-T",
                          "fields", "-e", "frame.time_epoch"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    return [float(x) for x in out.split()]


def test_activity_records_match_tshark_on_the_same_capture(kafka_bootstrap: str,
                                                           make_host: Callable[..., NetnsHost],
                                                           tmp_path: Path) -> None:
    a = make_host()
    topic = f"activity-e2e-{uuid.uuid4().hex[:8]}"
    pcap = tmp_path / "capture.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", a.host_if, "-n", "-U", "-s", "256", "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    prod = ProducerProcess("--interface", a.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                           "--partitions", "2", "--batch-age-ms", "50", "--payload-bytes", "256",
                           env={"PKTSTREAM_HOST_ID": "host-a"})
    try:
        with servers(tmp_path), side_servers(a.host_ip) as ports:
            prod.wait_event("producer_started")
            time.sleep(1.0)  # tcpdump listening
            plan = {"server": a.host_ip, "http_port": HTTP_PORT, "tls_port": TLS_PORT, "long_s": 3.0,
                    "closed_port": free_port(a.host_ip), **ports}
            done = [json.loads(x) for x in a.run(sys.executable, str(Path(__file__).parents[1] / "support" /
                                                                      "activity_clients.py"), json.dumps(plan),
                                                 timeout=120).stdout.splitlines()]
            # half-open: a SYN nothing answers
            a.send_frames([bytes(Ether(dst=a.host_mac, src=a.peer_mac) / IP(src=a.peer_ip, dst=NOWHERE)
                                 / TCP(sport=45555, dport=9, flags="S"))])
            time.sleep(1.0)
    finally:
        rc = prod.stop()
        dump.terminate()
        dump.wait(10)
    assert rc == 0
    assert [d["what"] for d in done] == ["http", "http", "http", "tls", "refused", "reset", "udp", "udp-oneway",
                                         "ping", "long"]
    out_topic = f"{topic}.connections"
    docs = run_activity(kafka_bootstrap, topic, out_topic, "--update-s", "1")
    on_topic = [json.loads(v) for _k, v, _h in read_messages(kafka_bootstrap, out_topic)]
    assert sorted(json.dumps(d, sort_keys=True) for d in on_topic) == sorted(json.dumps(d, sort_keys=True)
                                                                            for d in docs)
    v = validator("1.3.0", "network_activity")
    bad = [f"{e.json_path}: {e.message[:160]}" for d in docs for e in v.iter_errors(d)]
    assert not bad, bad[:5]
    finals = [d for d in docs if d["unmapped"]["pktstream"]["final"]]
    updates = [d for d in docs if not d["unmapped"]["pktstream"]["final"]]
    by_flow = {(d["src_endpoint"]["ip"], d["src_endpoint"].get("port", 0), d["dst_endpoint"]["ip"],
                d["dst_endpoint"].get("port", 0), d["connection_info"]["protocol_name"]): d for d in finals}
    assert len(by_flow) == len(finals), "one final record per conversation"
    convs = tshark_conversations(pcap)
    # every TCP and UDP conversation tshark saw has a final record with the same packets and bytes each way
    for (ha, pa, hb, pb, proto), (f_ab, b_ab, f_ba, b_ba) in convs.items():
        d = by_flow.get((ha, pa, hb, pb, proto))
        if d is not None:
            want = (f_ab, b_ab, f_ba, b_ba)
        else:
            d = by_flow[(hb, pb, ha, pa, proto)]
            want = (f_ba, b_ba, f_ab, b_ab)
        t = d["traffic"]
        assert (t["packets_out"], t["bytes_out"], t["packets_in"], t["bytes_in"]) == want, (ha, pa, hb, pb, d)
        s, e = d["src_endpoint"], d["dst_endpoint"]
        assert d["unmapped"]["pktstream"]["community_id"] == cid(s["ip"], e["ip"], 6 if proto == "tcp" else 17,
                                                                 s["port"], e["port"])
        assert d["unmapped"]["pktstream"]["seen_by"] == [f"host-a/{a.host_if}"]
    assert len([f for f in finals if f["connection_info"]["protocol_name"] in ("tcp", "udp")]) == len(convs)
    # what each conversation was
    client = a.peer_ip
    state = {d["what"]: by_flow[(client, d["cport"], a.host_ip, d["port"], "udp" if "udp" in d["what"] else "tcp")]
             for d in done if d["what"] != "ping"}
    assert {w: (r["status_code"], r["activity_name"]) for w, r in state.items()} == {
        "http": ("SF", "Close"), "tls": ("SF", "Close"), "refused": ("REJ", "Refuse"), "reset": ("RSTR", "Reset"),
        "udp": ("BOTH", "Traffic"), "udp-oneway": ("ONE", "Traffic"), "long": ("SF", "Close")}
    assert state["tls"]["dst_endpoint"]["hostname"] == "pay.shop.test"
    half = by_flow[(a.peer_ip, 45555, NOWHERE, 9, "tcp")]
    assert (half["status_code"], half["activity_name"], half["traffic"]["packets"]) == ("S0", "Fail", 1)
    # ICMP: the ping (request and reply, one conversation) and the port unreachable the closed UDP port
    # drew, as tshark counts their frames each way
    icmp = {d["unmapped"]["pktstream"]["icmp_type"]: d for d in finals
            if d["connection_info"]["protocol_name"] == "icmp"}
    frames = tshark_icmp(pcap)
    assert sorted(icmp) == [3, 8]
    for itype, types, src, dst in ((8, (8, 0), client, a.host_ip), (3, (3,), a.host_ip, client)):
        d = icmp[itype]
        t = d["traffic"]
        mine = [f for f in frames if f[2] in types]
        assert (d["src_endpoint"]["ip"], d["dst_endpoint"]["ip"]) == (src, dst)
        assert (t["packets_out"], t["bytes_out"]) == (sum(1 for f in mine if f[0] == src),
                                                      sum(f[3] for f in mine if f[0] == src))
        assert (t["packets_in"], t["bytes_in"]) == (sum(1 for f in mine if f[1] == src),
                                                    sum(f[3] for f in mine if f[1] == src))
        code = d["unmapped"]["pktstream"]["icmp_code"]
        assert d["unmapped"]["pktstream"]["community_id"] == cid(src, dst, 1, itype, code)
    assert icmp[8]["traffic"]["packets"] == 2 and icmp[3]["traffic"]["packets"] == 1
    # the long-lived connection (3 s, a packet each 0.5 s, --update-s 1): Traffic records on the way,
    # each with the totals so far, the last one's totals whole
    long = state["long"]
    ups = [u for u in updates if u["connection_info"]["uid"] == long["connection_info"]["uid"]]
    assert len(ups) >= 1
    assert all(u["activity_name"] == "Traffic" and u["status_code"] == "S1" for u in ups)
    # each update counts the packets captured before its boundary (tshark's times: within 5 ms of it
    # a packet may fall either side, the two clocks being read microseconds apart)
    times = tshark_times(pcap, long["src_endpoint"]["port"], long["dst_endpoint"]["port"])
    assert len(times) == long["traffic"]["packets"]
    for u in ups:
        b = u["end_time"] / 1000
        assert sum(t < b - 0.005 for t in times) <= u["traffic"]["packets"] <= sum(t < b + 0.005 for t in times), \
            (u, times)
    assert ups[-1]["traffic"]["packets"] < long["traffic"]["packets"]  # the close came after the last boundary
    assert len(ups) == len(updates)  # the other conversations were shorter than an interval
    # the records as the table connections of pktstream query (records not of this kind set aside)
    from confluent_kafka import Producer

    prod_k = Producer({"bootstrap.servers": kafka_bootstrap})
    for junk in (b"not json", b'{"time": 1}', json.dumps({**finals[0], "traffic": "x"}).encode()):
        prod_k.produce(out_topic, junk)
    assert prod_k.flush(30) == 0
    q = subprocess.run([PKTSTREAM, "query", "--bootstrap-servers", kafka_bootstrap, "--connections-topic", out_topic,
                        "--format", "json", "SELECT conn_state, count(*) AS n, sum(packets_out + packets_in) AS p, "
                        "count(DISTINCT community_id) AS c FROM connections WHERE final GROUP BY conn_state"],
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    want: dict[str, list[int]] = {}
    for d in finals:
        w = want.setdefault(d["status_code"], [0, 0])
        w[0] += 1
        w[1] += d["traffic"]["packets"]
    got = {r["conn_state"]: [r["n"], r["p"]] for r in map(json.loads, q.stdout.splitlines())}
    assert got == want
    # a replay gives the same records
    again = run_activity(kafka_bootstrap, topic, f"{out_topic}.2", "--update-s", "1", "--partitions", "2")
    assert sorted(json.dumps(d, sort_keys=True) for d in again) == sorted(json.dumps(d, sort_keys=True)
                                                                         for d in docs)
