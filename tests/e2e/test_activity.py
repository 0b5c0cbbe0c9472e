"""``pktstream activity`` against real traffic and the real broker: every conversation's and DNS
lookup's record compared with independent meters on the same capture (tshark's conversation
statistics for packets and bytes each way, its DNS dissector for names, response codes, answers and
response times, the ``communityid`` package for Community IDs, OCSF's own schema), and a replay equal
to the first run."""

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
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSRR
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


@contextmanager
def dns_server(addr: str) -> Iterator[None]:
    """A DNS server on port 53 of the test host's address (UDP and TCP): www.shop.test answered after
    30 ms, alias.shop.test a CNAME and an AAAA, many.shop.test thirty addresses (more than a 256-byte
    prefix holds), refused.shop.test refused, nx.shop.test nonexistent, silent.shop.test never."""
    stop = threading.Event()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, 53))
    udp.settimeout(0.2)
    tcp = socket.create_server((addr, 53))

    def answer(raw: bytes) -> bytes | None:
        q = DNS(raw)
        name = q.qd[0].qname.decode().rstrip(".")
        rcode, an = 0, []
        if name == "silent.shop.test":
            return None
        if name == "www.shop.test":
            time.sleep(0.03)
            an = [DNSRR(rrname=name, type="A", rdata="10.0.0.80", ttl=300)]
        elif name == "alias.shop.test":
            an = [DNSRR(rrname=name, type="CNAME", rdata="www.shop.test", ttl=60),
                  DNSRR(rrname="www.shop.test", type="AAAA", rdata="2001:db8::80", ttl=60)]
        elif name == "many.shop.test":
            an = [DNSRR(rrname=name, type="A", rdata=f"10.0.1.{i}", ttl=30) for i in range(1, 31)]
        elif name == "refused.shop.test":
            rcode = 5
        else:
            rcode = 3
        return bytes(DNS(id=q.id, qr=1, rd=q.rd, ra=1, rcode=rcode, qd=q.qd, an=an))

    def serve_udp() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                data, peer = udp.recvfrom(4096)
                out = answer(data)
                if out is not None:
                    udp.sendto(out, peer)

    def serve_tcp() -> None:
        while not stop.is_set():
            try:
                c, _ = tcp.accept()
            except OSError:
                return
            with c:
                data = c.recv(4096)
                out = answer(data[2:]) if len(data) > 2 else None
                if out is not None:
                    c.sendall(len(out).to_bytes(2, "big") + out)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_udp, serve_tcp)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            tcp.shutdown(socket.SHUT_RDWR)
        tcp.close()
        udp.close()
        for t in threads:
            t.join(5)


def tshark_dns(pcap: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Every DNS message tshark reads, by (client port, id): the query's name, and of the response
    its response code, response time (dns.time), answer count and A, AAAA and CNAME answers."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "dns", "-T", "fields", "-E", "aggregator=,",
                          "-e", "udp.srcport", "-e", "udp.dstport", "-e", "tcp.srcport", "-e", "tcp.dstport",
                          "-e", "dns.id", "-e", "dns.flags.response", "-e", "dns.qry.name", "-e", "dns.flags.rcode",
                          "-e", "dns.time", "-e", "dns.count.answers", "-e", "dns.a", "-e", "dns.aaaa", "-e",
                          "dns.cname"], capture_output=True, text=True, check=True, timeout=120).stdout
    got: dict[tuple[int, int], dict[str, Any]] = {}
    for line in out.splitlines():
        us, ud, ts_, td, ident, resp, name, rcode, dtime, count, a4, a6, cname = line.split("\t")
        sp, dp = int(us or ts_), int(ud or td)
        response = resp in ("1", "True")
        e = got.setdefault((dp if response else sp, int(ident, 0)), {})
        e["name"] = name
        if response:
            e.update(rcode=int(rcode), time=float(dtime) if dtime else None, count=int(count),
                     a=[x for x in a4.split(",") if x], aaaa=[x for x in a6.split(",") if x],
                     cname=[x for x in cname.split(",") if x])
    return got


def tshark_http(pcap: Path) -> dict[int, dict[str, Any]]:
    """Every HTTP/1.x exchange tshark reads, by client port: the request's method, host, URI and user
    agent, the response's code and its time since the request (http.time)."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "http", "-T", "fields", "-e", "tcp.srcport", "-e",
                          "tcp.dstport", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri",
                          "-e", "http.user_agent", "-e", "http.response.code", "-e", "http.time"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    got: dict[int, dict[str, Any]] = {}
    for line in out.splitlines():
        sp, dp, method, host, uri, ua, code, t = line.split("\t")
        if method:
            got.setdefault(int(sp), {}).update(method=method, host=host, uri=uri, ua=ua)
        elif code:
            got.setdefault(int(dp), {}).update(code=int(code), time=float(t))
    return got


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
    dump = subprocess.Popen(["tcpdump", "-i", a.host_if, "-n", "-U", "-s", "1500", "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    prod = ProducerProcess("--interface", a.host_if, "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                           "--partitions", "2", "--batch-age-ms", "50", "--payload-bytes", "256",
                           env={"PKTSTREAM_HOST_ID": "host-a"})
    try:
        with servers(tmp_path), side_servers(a.host_ip) as ports, dns_server(a.host_ip):
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
                                         "ping", "long", *["dns"] * 6, "dns-tcp"]
    out_topic = f"{topic}.connections"
    every = run_activity(kafka_bootstrap, topic, out_topic, "--update-s", "1")
    docs = [d for d in every if d["class_uid"] == 4001]
    check_lookups([d for d in every if d["class_uid"] == 4003], [d for d in done if d["what"].startswith("dns")],
                  tshark_dns(pcap), a)
    check_exchanges([d for d in every if d["class_uid"] == 4002], [d for d in done if d["what"] == "http"],
                    tshark_http(pcap), a)
    assert sorted(json.dumps(d, sort_keys=True) for d in every if d["class_uid"] == 4003) == sorted(
        json.dumps(json.loads(v), sort_keys=True) for _k, v, _h in read_messages(kafka_bootstrap, f"{out_topic}.dns"))
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
             for d in done if d["what"] != "ping" and not d["what"].startswith("dns")}
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
    # the other TCP and UDP conversations are shorter than an interval, but a UDP one still open a whole
    # interval after it began (a DNS lookup, seen in a loaded CI run) has its update too: each update is on
    # a boundary, at least an interval after its conversation began, with its totals so far (the kernel's
    # own ICMPv6 on the link may have updates as well)
    others = [u for u in updates if u["connection_info"]["protocol_name"] in ("tcp", "udp")
              and u["connection_info"]["uid"] != long["connection_info"]["uid"]]
    final_of = {d["connection_info"]["uid"]: d for d in finals}
    for u in others:
        f = final_of[u["connection_info"]["uid"]]
        assert u["end_time"] % 1000 == 0 and u["start_time"] == f["start_time"] <= u["end_time"] - 1000, (u, f)
        assert u["activity_name"] == "Traffic" and 0 < u["traffic"]["packets"] <= f["traffic"]["packets"], (u, f)
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
    # and the lookups as the table dns (junk set aside)
    for junk in (b"not json", json.dumps({**finals[0], "class_uid": 4003}).encode()):
        prod_k.produce(f"{out_topic}.dns", junk)
    assert prod_k.flush(30) == 0
    q = subprocess.run([PKTSTREAM, "query", "--bootstrap-servers", kafka_bootstrap, "--dns-topic", f"{out_topic}.dns",
                        "--format", "json", "SELECT query_name, rcode, answered, latency_us, len(answers) AS a "
                        "FROM dns ORDER BY query_name"], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    lookups = sorted((d["unmapped"]["pktstream"]["query_name"], d.get("rcode"), d["unmapped"]["pktstream"]["answered"],
                      d["unmapped"]["pktstream"].get("latency_us"), len(d.get("answers", [])))
                     for d in every if d["class_uid"] == 4003)
    assert sorted(tuple(r.values()) for r in map(json.loads, q.stdout.splitlines())) == lookups
    # and the HTTP exchanges as the table http (junk, and records whose values do not fit, set aside)
    http_doc = next(d for d in every if d["class_uid"] == 4002)
    for junk in (b"[]", json.dumps({**http_doc, "http_request": {"url": {"path": 5}}}).encode(),
                 json.dumps({**http_doc, "http_response": {"code": [200]}}).encode()):
        prod_k.produce(f"{out_topic}.http", junk)
    assert prod_k.flush(30) == 0
    q = subprocess.run([PKTSTREAM, "query", "--bootstrap-servers", kafka_bootstrap, "--http-topic",
                        f"{out_topic}.http", "--format", "json",
                        "SELECT path, status, latency_us, user_agent FROM http WHERE dst_port = 18080"],
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    want_http = sorted((d["http_request"]["url"]["path"], d["http_response"]["code"],
                        d["unmapped"]["pktstream"]["latency_us"], d["http_request"]["user_agent"])
                       for d in every if d["class_uid"] == 4002 and d["dst_endpoint"]["port"] == HTTP_PORT)
    assert sorted(tuple(r.values()) for r in map(json.loads, q.stdout.splitlines())) == want_http
    assert len(want_http) == 3
    # a replay gives the same records
    again = run_activity(kafka_bootstrap, topic, f"{out_topic}.2", "--update-s", "1", "--partitions", "2")
    assert sorted(json.dumps(d, sort_keys=True) for d in again) == sorted(json.dumps(d, sort_keys=True)
                                                                         for d in every)


def check_exchanges(records: list[dict[str, Any]], asked: list[dict[str, Any]],
                    shark: dict[int, dict[str, Any]], a: NetnsHost) -> None:
    """Each HTTP request the clients made has one HTTP Activity record that agrees with tshark's reading
    of the same capture: method, host, path, user agent, status code, and the answer's time since the
    request (within a millisecond)."""
    v = validator("1.3.0", "http_activity")
    bad = [f"{e.json_path}: {e.message[:160]}" for d in records for e in v.iter_errors(d)]
    assert not bad, bad[:5]
    mine = {d["src_endpoint"]["port"]: d for d in records if d["dst_endpoint"]["port"] == HTTP_PORT}
    assert len(mine) == len(asked) == 3
    for q in asked:
        d, t = mine[q["cport"]], shark[q["cport"]]
        rq, pk = d["http_request"], d["unmapped"]["pktstream"]
        assert (rq["http_method"], rq["url"]["hostname"], rq["url"]["path"], rq["user_agent"]) == (
            t["method"], t["host"], t["uri"], t["ua"])
        assert d["http_response"]["code"] == t["code"] == q["status"]
        assert abs(pk["latency_us"] / 1e6 - t["time"]) < 0.001, (pk["latency_us"], t["time"])
        assert pk["community_id"] == cid(a.peer_ip, a.host_ip, 6, q["cport"], HTTP_PORT)
        assert (d["src_endpoint"]["ip"], d["dst_endpoint"]["ip"]) == (a.peer_ip, a.host_ip)
    late = [d for d in mine.values() if d["http_response"]["code"] == 404]
    assert len(late) == 1 and late[0]["unmapped"]["pktstream"]["latency_us"] >= 150_000


def check_lookups(lookups: list[dict[str, Any]], asked: list[dict[str, Any]],
                  shark: dict[tuple[int, int], dict[str, Any]], a: NetnsHost) -> None:
    """Each lookup the clients made has one DNS Activity record that agrees with tshark's reading of
    the same capture: name, response code, response time (within a millisecond: the two captures'
    clocks are read microseconds apart), answers (those the 256-byte prefix holds, in order)."""
    v = validator("1.3.0", "dns_activity")
    bad = [f"{e.json_path}: {e.message[:160]}" for d in lookups for e in v.iter_errors(d)]
    assert not bad, bad[:5]
    mine = {(d["src_endpoint"]["port"], d["unmapped"]["pktstream"]["query_name"]): d for d in lookups}
    assert len(mine) == len(lookups) == len(asked)
    for q in asked:
        d = mine[(q["cport"], q["name"])]
        t = shark[(q["cport"], q["id"])]
        pk = d["unmapped"]["pktstream"]
        assert (d["src_endpoint"], d["dst_endpoint"]) == ({"ip": a.peer_ip, "port": q["cport"]},
                                                          {"ip": a.host_ip, "port": 53})
        assert d["query"]["hostname"] == t["name"] == q["name"] and d["query"]["packet_uid"] == q["id"]
        assert pk["community_id"] == cid(a.peer_ip, a.host_ip, 6 if q["what"] == "dns-tcp" else 17, q["cport"], 53)
        assert d["connection_info"]["protocol_name"] == ("tcp" if q["what"] == "dns-tcp" else "udp")
        if q["name"] == "silent.shop.test":
            assert "rcode" not in t and (d["activity_name"], pk["answered"]) == ("Query", False)
            continue
        assert (d["activity_name"], pk["answered"], d["rcode_id"]) == ("Traffic", True, t["rcode"])
        assert abs(pk["latency_us"] / 1e6 - t["time"]) < 0.001, (pk["latency_us"], t["time"])
        assert pk["answer_count"] == t["count"]
        got = {k: [x["rdata"] for x in d.get("answers", []) if x["type"] == k.upper()] for k in ("a", "aaaa", "cname")}
        if q["name"] == "many.shop.test":
            assert pk["answers_cut"] and 0 < len(got["a"]) < t["count"] == 30 and got["a"] == t["a"][: len(got["a"])]
        else:
            assert "answers_cut" not in pk and got == {k: t[k] for k in got}
    www = mine[(asked[0]["cport"], "www.shop.test")]
    assert www["unmapped"]["pktstream"]["latency_us"] >= 30_000 and www["answers"][0]["rdata"] == "10.0.0.80"
    assert [x["type"] for x in mine[(asked[1]["cport"], "alias.shop.test")]["answers"]] == ["CNAME", "AAAA"]
    assert {mine[(q["cport"], q["name"])]["rcode"] for q in asked[3:5]} == {"Refused", "NXDomain"}
