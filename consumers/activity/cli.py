"""``pktstream activity``."""

from __future__ import annotations

import argparse
import json

from pktstream.consumers.activity import MAX_CONVERSATIONS, MAX_DNS_PENDING
from pktstream.consumers.catalog import Catalog
from pktstream.consumers.engine.app import add_stream_options, conf_from, json_schema, run_app, stream_config
from pktstream.consumers.engine.runner import Output
from pktstream.runtime.cli import Verb
from pktstream.runtime.errors import ConfigError
from pktstream.runtime.log import configure_logging


def add_arguments(ac: argparse.ArgumentParser) -> None:
    add_stream_options(ac, "pktstream-activity", 9467)
    ac.add_argument("--connections-topic", default="pktstream.connections",
                    help="where the conversation records go (OCSF 1.3.0 Network Activity JSON)")
    ac.add_argument("--update-s", type=float, default=60.0,
                    help="a conversation longer than this gets a Traffic record at each such boundary of event "
                         "time with packets in the interval (its totals so far)")
    ac.add_argument("--tcp-idle-s", type=float, default=300.0,
                    help="a TCP conversation nothing was seen of for this long ends (event time)")
    ac.add_argument("--udp-idle-s", dest="other_idle_s", type=float, default=60.0,
                    help="how long a UDP, ICMP or other conversation may be silent before it ends (event time)")
    ac.add_argument("--linger-s", type=float, default=5.0,
                    help="how long after its last packet a closed TCP conversation (FIN each way, or a RST) waits "
                         "for stragglers before its record is written")
    ac.add_argument("--attempt-s", type=float, default=30.0,
                    help="a TCP connection attempt nothing answered ends after this long without packets (the "
                         "SYN's retransmissions come within it)")
    ac.add_argument("--max-conversations", type=int, default=MAX_CONVERSATIONS,
                    help="open conversations per partition; past it, those seen least lately end early (their "
                         "records say evicted)")
    ac.add_argument("--dns-topic", default="pktstream.dns",
                    help="where the DNS lookup records go (OCSF 1.3.0 DNS Activity JSON)")
    ac.add_argument("--dns-timeout-s", type=float, default=10.0,
                    help="a DNS query nothing answered within this long (event time) is written as unanswered")
    ac.add_argument("--max-dns-pending", type=int, default=MAX_DNS_PENDING,
                    help="DNS messages per partition waiting for their answer; past it, the oldest are written as "
                         "they stand (their records say evicted)")
    ac.add_argument("--http-topic", default="pktstream.http",
                    help="where the HTTP exchange records go (OCSF 1.3.0 HTTP Activity JSON)")
    ac.add_argument("--http-timeout-s", type=float, default=30.0,
                    help="an HTTP request nothing answered within this long (event time) is written as unanswered")
    ac.add_argument("--max-http-pending", type=int, default=MAX_DNS_PENDING,
                    help="HTTP requests and answers per partition waiting to be paired; past it, the oldest are "
                         "written as they stand (their records say evicted)")
    ac.add_argument("--records", default="network,dns,http",
                    help="the record classes to write, comma-separated: network (conversations, always on), dns, http")
    ac.add_argument("--output", choices=["lines", "json", "none"], default="lines",
                    help="what to print as records are written: one line each, the OCSF documents, nothing")


def render_dns(d: dict[str, object]) -> str:
    src, dst, p, c = d["src_endpoint"], d["dst_endpoint"], d["unmapped"], d["connection_info"]
    assert isinstance(src, dict) and isinstance(dst, dict) and isinstance(p, dict) and isinstance(c, dict)
    pk = p["pktstream"]
    answers = d.get("answers") or []
    assert isinstance(answers, list)
    lat = f"{pk['latency_us'] / 1000:.1f}ms" if "latency_us" in pk else "unanswered" if not pk["answered"] else \
        "no-query"
    q = d.get("query")
    qtype = q.get("type", "") if isinstance(q, dict) else pk.get("query_type", "")
    return (f"DNS     {c['protocol_name']!s:5} {src['ip']}:{src['port']} -> {dst['ip']}:{dst['port']} "
            f"{pk['query_name']} {qtype} {d.get('rcode', '-')} {lat} "
            f"{' '.join(str(a['rdata']) for a in answers[:4])}".rstrip())


def render_http(d: dict[str, object]) -> str:
    src, dst, p, rq, rs = d["src_endpoint"], d["dst_endpoint"], d["unmapped"], d["http_request"], d["http_response"]
    assert isinstance(src, dict) and isinstance(dst, dict) and isinstance(p, dict)
    assert isinstance(rq, dict) and isinstance(rs, dict)
    pk = p["pktstream"]
    url = rq.get("url") or {}
    lat = f"{pk['latency_us'] / 1000:.1f}ms" if "latency_us" in pk else "unanswered" if not pk["answered"] else \
        "no-request"
    return (f"HTTP    {src['ip']}:{src['port']} -> {dst['ip']}:{dst['port']} {pk['method'] or '-'} "
            f"{pk['host'] or '-'} {url.get('path', '-')} {rs.get('code', 0)} {lat} {pk['api']}".rstrip())


def render(doc: dict[str, object]) -> str:
    d: dict[str, object] = doc
    if d.get("class_uid") == 4003:
        return render_dns(d)
    if d.get("class_uid") == 4002:
        return render_http(d)
    src, dst = d["src_endpoint"], d["dst_endpoint"]
    t, p, c = d["traffic"], d["unmapped"], d["connection_info"]
    assert isinstance(src, dict) and isinstance(dst, dict) and isinstance(t, dict) and isinstance(p, dict)
    assert isinstance(c, dict)
    pk = p["pktstream"]

    def ep(e: dict[str, object]) -> str:
        ip = str(e["ip"])
        ip = f"[{ip}]" if ":" in ip else ip
        return f"{ip}:{e['port']}" if "port" in e else ip

    return (f"{str(d['activity_name']).upper():7} {c['protocol_name']:5} {ep(src)} -> {ep(dst)} "
            f"{pk['conn_state']:6} out {t['packets_out']}p/{t['bytes_out']}B in {t['packets_in']}p/{t['bytes_in']}B "
            f"{d['duration']}ms {dst.get('hostname', '')}".rstrip())


def run(args: argparse.Namespace) -> int:
    from pktstream.consumers.activity.processor import ActivityProcessor

    configure_logging(args.log_format, "info")
    problems = []
    for flag, name in (("update_s", "update-s"), ("tcp_idle_s", "tcp-idle-s"), ("other_idle_s", "udp-idle-s"),
                       ("linger_s", "linger-s"), ("attempt_s", "attempt-s"),
                       ("max_conversations", "max-conversations"), ("dns_timeout_s", "dns-timeout-s"),
                       ("max_dns_pending", "max-dns-pending"), ("http_timeout_s", "http-timeout-s"),
                       ("max_http_pending", "max-http-pending")):
        if not getattr(args, flag) > 0:
            problems.append(f"--{name} must be > 0, got {getattr(args, flag)}")
    records = tuple(x.strip() for x in args.records.split(",") if x.strip())
    unknown = sorted(set(records) - {"network", "dns", "http"})
    if unknown:
        problems.append(f"--records: unknown record class(es) {', '.join(unknown)} (network, dns, http)")
    catalog = None
    if args.catalog:
        try:
            catalog = Catalog.load(args.catalog)
        except ConfigError as e:
            problems += e.problems
    cfg = stream_config(args, "pktstream-activity", problems)
    proc = ActivityProcessor(args.connections_topic, args.grace_s, update_s=args.update_s,
                             tcp_idle_s=args.tcp_idle_s, idle_s=args.other_idle_s, linger_s=args.linger_s,
                             attempt_s=args.attempt_s, max_conversations=args.max_conversations,
                             dns_topic=args.dns_topic, dns_timeout_s=args.dns_timeout_s,
                             max_dns_pending=args.max_dns_pending, http_topic=args.http_topic,
                             http_timeout_s=args.http_timeout_s, max_http_pending=args.max_http_pending,
                             catalog=catalog, records=("network", *records))

    def show(outputs: list[Output]) -> None:
        for o in outputs:
            if args.output == "lines":
                print(render(json.loads(o.value)), flush=True)
            elif args.output == "json":
                print(o.value.decode(), flush=True)

    return run_app(args, conf_from(args), cfg, proc, [args.connections_topic, args.dns_topic, args.http_topic], show,
                   schemas={args.connections_topic: json_schema("network_activity"),
                            args.dns_topic: json_schema("dns_activity"), args.http_topic: json_schema("http_activity")})


VERBS = {"activity": Verb("conversation and DNS lookup records from the packet topic (OCSF Network and DNS "
                          "Activity JSON)", add_arguments, run)}
