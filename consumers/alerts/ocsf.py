"""Alerts as OCSF 1.3.0 Detection Findings (class 2004), their Avro variant, and a terminal line."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pktstream.consumers.alerts.detector import SEC, proto_name
from pktstream.consumers.alerts.detectors import registry
from pktstream.consumers.alerts.tables import OpenAlert
from pktstream.consumers.engine.communityid import community_id

OCSF_VERSION = "1.3.0"

SEVERITY = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
ACTIVITY = {1: "Create", 2: "Update", 3: "Close"}
STATUS = {1: (1, "New"), 2: (2, "In Progress"), 3: (4, "Resolved")}
# network_connection_info.direction_id, judged from which side of the sample packet is local
DIRECTION = {0: "Unknown", 1: "Inbound", 2: "Outbound", 3: "Lateral"}
# the networks an address is "inside" by default (rules file: local_networks): private, shared
# (CGNAT), loopback, link-local and unique-local ranges
LOCAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
                  "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

try:
    PRODUCT_VERSION = version("pktstream")
except PackageNotFoundError:  # pragma: no cover (running from a tree that was never installed)
    PRODUCT_VERSION = "0"


def networks(texts: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(t, strict=False) for t in texts]


def direction_id(src: str, dst: str, local: Sequence[Network]) -> int:
    """OCSF direction of a connection from its endpoints: outside to inside is Inbound (1), inside to
    outside Outbound (2), inside to inside Lateral (3); anything else (both outside, an address that
    is not one) Unknown (0)."""
    def inside(a: str) -> bool | None:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            return None
        return any(ip.version == n.version and ip in n for n in local)

    s, d = inside(src), inside(dst)
    if s is None or d is None:
        return 0
    return {(False, True): 1, (True, False): 2, (True, True): 3}.get((s, d), 0)


def sample_community_id(s: dict[str, Any]) -> str:
    """The Community ID (v1) of the sample packet's conversation ("" when its addresses are not
    two of one family, or the packet is not IP: protocol 0), by which a SIEM joins the finding with
    Zeek, Suricata or Packetbeat records of that conversation. (An IPv4-mapped IPv6 address reads
    as IPv4 in the records, so such a conversation hashes as IPv4: Zeek hashes its 16 bytes.)"""
    try:
        if not int(s["protocol"]):
            return ""
        return community_id(str(s["src"]), str(s["dst"]), int(s["protocol"]), int(s["src_port"]), int(s["dst_port"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return ""


def ocsf(a: OpenAlert, activity: int, facts: dict[str, Any] | None, window_ns: int, host: str,
         local: Sequence[Network] = ()) -> dict[str, Any]:
    """The alert as an OCSF 1.3.0 Detection Finding (class 2004), valid by the official schema
    (tests/support/ocsf.py validates every event of the real-traffic tests)."""
    r = registry()[a.rule]
    tech_uid, tech_name = r.technique
    tactic_uid, tactic_name = r.tactic
    status_id, status = STATUS[activity]
    last_seen = a.last_seen if facts is None else max(a.last_seen, facts["t1"])
    time_ms = (a.last_window + window_ns) // 1_000_000  # the end of the window that decided it
    doc: dict[str, Any] = {
        "activity_id": activity, "activity_name": ACTIVITY[activity],
        "category_uid": 2, "category_name": "Findings",
        "class_uid": 2004, "class_name": "Detection Finding",
        "type_uid": 200400 + activity, "type_name": f"Detection Finding: {ACTIVITY[activity]}",
        "time": time_ms,
        "severity_id": r.severity_id, "severity": SEVERITY[r.severity_id],
        "status_id": status_id, "status": status,
        "message": _message(facts) or f"{r.title} {a.key}: no longer seen",
        "count": a.count,
        "start_time": a.first_seen // 1_000_000, "end_time": last_seen // 1_000_000,
        "timezone_offset": 0,  # every time is UTC (epoch milliseconds)
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "pktstream", "vendor_name": "pktstream", "version": PRODUCT_VERSION,
                        "feature": {"name": "alerts"}},
            "log_provider": "pktstream",
            "uid": hashlib.sha256(f"{a.uid}|{activity}|{a.last_window}".encode()).hexdigest()[:32],
            "correlation_uid": a.uid,
            "log_name": "pktstream.alerts",
        },
        "finding_info": {
            "uid": a.uid, "title": f"{r.title}: {a.key}", "desc": r.rule,
            "types": [a.rule],
            "first_seen_time": a.first_seen // 1_000_000, "last_seen_time": last_seen // 1_000_000,
            "analytic": {"name": a.rule, "uid": a.rule, "type_id": 1, "type": "Rule", "desc": r.rule},
            "attacks": [{"technique": {"uid": tech_uid, "name": tech_name},
                         "tactic": {"uid": tactic_uid, "name": tactic_name}, "version": "v15"}],
        },
        "unmapped": {"pktstream": {"rule": a.rule, "key": a.key, "windows": a.windows,
                                   "window_start": a.last_window // 1_000_000,
                                   "window_s": window_ns // SEC}},
    }
    if facts is not None:
        s = facts["sample"]
        direction = direction_id(s["src"], s["dst"], local)
        doc["evidences"] = [{
            "src_endpoint": {"ip": s["src"], "port": s["src_port"]},
            "dst_endpoint": {"ip": s["dst"], "port": s["dst_port"]},
            "connection_info": {"protocol_num": s["protocol"], "protocol_name": proto_name(s["protocol"]),
                                "direction_id": direction, "direction": DIRECTION[direction],
                                "protocol_ver_id": 6 if ":" in s["src"] else 4,
                                "protocol_ver": "Internet Protocol version 6" if ":" in s["src"]
                                else "Internet Protocol version 4"},
            # (OCSF 1.4 has connection_info.community_uid for it; 1.3.0, which these declare, has not)
            "data": {**{k: v for k, v in s.items() if k not in ("src", "dst", "src_port", "dst_port", "protocol")},
                     "community_id": sample_community_id(s)},
        }]
        doc["observables"] = [{"name": "src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": s["src"]},
                              {"name": "dst_endpoint.ip", "type_id": 2, "type": "IP Address", "value": s["dst"]}]
        doc["unmapped"]["pktstream"].update({"window_count": facts["count"], "window_bytes": facts["bytes"],
                                             "distinct": facts["distinct"], "top": facts["top"],
                                             "seen_by": facts["seen_by"],
                                             "records_lost": facts.get("records_lost", 0),
                                             "sampled": bool(facts.get("sampled", False))})
    return doc


def _message(facts: dict[str, Any] | None) -> str:
    """What the window saw, and that the capture behind it was not whole when it was not."""
    if not facts or not facts.get("what"):
        return ""
    text = str(facts["what"])
    if facts.get("sampled"):
        text += "; estimated from sampled records"
    lost = int(facts.get("records_lost", 0))
    if lost:
        text += f"; capture incomplete: {lost} records lost by {', '.join(facts.get('lost_by', []))} meanwhile"
    return text


def avro_record(doc: dict[str, Any]) -> dict[str, Any]:
    """The Avro variant (schemas/alert.avsc) of an OCSF alert document."""
    p = doc["unmapped"]["pktstream"]
    fi = doc["finding_info"]
    ev = (doc.get("evidences") or [{}])[0]
    att = fi["attacks"][0]
    return {
        "uid": fi["uid"], "rule": p["rule"], "key": p["key"], "activity": doc["activity_name"].lower(),
        "time_ms": doc["time"], "severity_id": doc["severity_id"], "title": fi["title"], "message": doc["message"],
        "technique": att["technique"]["uid"], "technique_name": att["technique"]["name"],
        "tactic": att["tactic"]["uid"], "first_seen_ms": fi["first_seen_time"], "last_seen_ms": fi["last_seen_time"],
        "count": doc["count"], "window_start_ms": p["window_start"], "window_s": p["window_s"],
        "window_count": p.get("window_count", 0), "distinct": p.get("distinct", 0),
        "top": [{"value": str(t["value"]), "count": int(t["count"])} for t in p.get("top", [])],
        "src": (ev.get("src_endpoint") or {}).get("ip", ""), "dst": (ev.get("dst_endpoint") or {}).get("ip", ""),
        "src_port": (ev.get("src_endpoint") or {}).get("port", 0),
        "dst_port": (ev.get("dst_endpoint") or {}).get("port", 0),
        "protocol": (ev.get("connection_info") or {}).get("protocol_num", 0),
        "seen_by": list(p.get("seen_by", [])), "records_lost": int(p.get("records_lost", 0)),
        "sampled": bool(p.get("sampled", False)),
        "ocsf_version": doc["metadata"]["version"],
        "direction_id": (ev.get("connection_info") or {}).get("direction_id", 0),
        "community_id": str((ev.get("data") or {}).get("community_id") or ""),
    }


def render(doc: dict[str, Any]) -> str:
    """One terminal line per alert event."""
    p = doc["unmapped"]["pktstream"]
    tech = doc["finding_info"]["attacks"][0]["technique"]["uid"]
    return (f"{doc['activity_name'].upper():6} {doc['severity'].upper():8} {p['rule']:15} {p['key']}  "
            f"{doc['message']}  [{tech}] id={doc['finding_info']['uid'][:12]}")
