"""``pktstream alerts``: detections from the packet stream, as OCSF Detection Findings.

Runs on ``stream.StreamRunner`` (exactly once, scaled out, replayable). Stage one folds each
connection's packets per second into rows (packets with odd TCP flags, and requests, stay rows
of their own), marks attack strings in HTTP requests (``attacks.py``) and routes each row to the
partition of its destination address; the rows a detector asks for (``source_rows``: attempts for
address sweeps, everything for per-source volumes) also go to the partition of their source
address. Each partition then keeps, per detector (one module each in ``detectors/``) and event-time
window, a table of (key, item, capture point) counters in a C hash table (``agg.Groups``): a batch is one C
pass, and Python only looks at the keys that crossed a threshold when the window closes.

An alert is an ongoing condition: the first window a key crosses the threshold creates it (OCSF
activity Create) with an id derived from (rule, key, that window's start); each later window in
which it still fires updates it (Update, same id); the first window it does not fire closes it
(Close). Ids, counts and evidence depend only on the input, so a replay gives the same alerts and
a restarted consumer (state and offsets committed together) neither repeats nor misses one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt

from pktstream.consumers.alerts.detector import SEC, Detector, Evidence, Setup, View, Window, addr_text
from pktstream.consumers.alerts.detectors import registry
from pktstream.consumers.alerts.ocsf import avro_record, networks, ocsf
from pktstream.consumers.alerts.rules import Rules
from pktstream.consumers.alerts.tables import (
    MAX_PATHS,
    OTHER,
    AlertsState,
    Baselines,
    OpenAlert,
    StateStrings,
    Table,
    expand,
)
from pktstream.consumers.catalog import Catalog
from pktstream.consumers.engine.agg import batch as agg_batch
from pktstream.consumers.engine.agg import group_index
from pktstream.consumers.engine.features import VIEW_DST, VIEW_SRC, Features, addr_hash, featurize, take
from pktstream.consumers.engine.losses import MAX_LOST, SECOND, Losses
from pktstream.consumers.engine.runner import FOREVER, Output
from pktstream.schemas import headers as H
from pktstream.schemas import load_schema_json

_PARSED = fastavro.parse_schema(load_schema_json("alert"))
TOP_EVIDENCE = 10
MIN_BASELINE_KEYS = 1000  # a degraded snapshot halves the baselines down to this

__all__ = ["AlertsProcessor"]


class AlertsProcessor:
    def __init__(self, rules: Rules, catalog: Catalog | None = None, topic: str = "pktstream.alerts",
                 grace_s: float = 5.0, fmt: str = "json", host: str = "", max_paths: int = MAX_PATHS) -> None:
        self.rules = rules
        self.max_paths = max_paths
        self.catalog = catalog or Catalog()
        self.topic = topic
        self.grace_ns = int(grace_s * SEC)
        self.fmt = fmt
        self.host = host
        self.local = networks(rules.local_networks)
        setup = Setup(self.catalog, list(rules.external_interfaces), rules.detectors)
        self.detectors: dict[str, Detector] = {name: cls(rules.detectors[name], setup)
                                               for name, cls in registry().items() if rules.on(name)}
        # stage one folds a connection's packets within one bin of every table: a sliding
        # detector's bin is its hop, which divides its window
        bins = [rules.step_ns(d) for d in self.detectors] or [SEC]
        self.fold_ns = max(SEC, math.gcd(*bins))
        scans = [s for d in self.detectors.values() if (s := d.payload_scan()) is not None]
        if len(scans) > 1:
            raise ValueError("features.featurize takes one payload scan; two detectors ask for one")
        self.payload_scan = scans[0] if scans else None
        self.keep_apart = next((cls.keep_apart for cls in registry().values()
                                if cls.keep_apart is not Detector.keep_apart), None)
        self.egress = any(d.answers for d in self.detectors.values())

    # -- stage one ------------------------------------------------------------------------------

    def featurize(self, batch: Any, origin: str) -> Features:
        return featurize(batch, origin, attack_scan=self.payload_scan, coalesce_ns=self.fold_ns,
                         keep_apart=self.keep_apart, egress=self.egress)

    def route(self, f: Features, nparts: int) -> dict[int, Features]:
        rows = f.rows  # featurize made them: view is VIEW_DST (0) already
        n = len(rows)
        if n == 0:
            return {}
        to_src = np.zeros(n, dtype=bool)
        ingress = rows["direction"] == 0
        for d in self.detectors.values():
            m = d.source_rows(rows)
            if m is not None:
                to_src |= m if d.answers else m & ingress
        src_idx = np.flatnonzero(to_src)
        # one gather builds every partition's rows: its destination rows, then its source rows
        part = np.concatenate([addr_hash(rows["dst_addr"]), addr_hash(rows["src_addr"][src_idx])]) % np.uint64(nparts)
        order = np.argsort(part.astype(np.uint8 if nparts <= 256 else np.int64), kind="stable")
        gather = np.concatenate([np.arange(n), src_idx])[order]
        rs = take(rows, gather)
        rs["view"][order >= n] = VIEW_SRC
        bounds = np.searchsorted(part[order], np.arange(nparts + 1, dtype=np.uint64))
        return {q: Features(rs[bounds[q] : bounds[q + 1]], f.strings) for q in range(nparts)
                if bounds[q + 1] > bounds[q]}

    # -- stage two ------------------------------------------------------------------------------

    def new_state(self) -> AlertsState:
        return AlertsState(strings=StateStrings(limit=self.max_paths))

    def _add(self, st: AlertsState, det: Detector, v: View, sel: npt.NDArray[np.intp], k: npt.NDArray[np.uint64],
             item: Any = 0, n: Any = None, sub: Any = 0, s: Any = -1, f: Any = None) -> None:
        """Rows sel of a view added to the detector's window tables under key k (one per row)."""
        if len(sel) == 0:
            return
        w = self.rules.step_ns(det.name)  # a window, or a sliding window's hop
        a = agg_batch(len(sel), k=k, item=item, o=v.o[sel], n=v.n[sel] if n is None else n, b=v.b[sel],
                      t=v.t[sel], sub=sub, s=s, r=v.r[sel], f=v.fh[sel] if f is None else f)
        win = a[5] - a[5] % w
        closed = st.closed_until.get(det.name, 0)
        if int(win.min()) < closed:
            late = win < closed
            st.late_records += int(v.n[sel[late]].sum())
            keep = ~late
            a, win, sel = a[:, keep], win[keep], sel[keep]
            if len(sel) == 0:
                return
        wins = st.windows.setdefault(det.name, {})
        lo, hi = int(win.min()), int(win.max())
        if lo == hi:
            self._table(wins, det, lo).add(a, v.rows, sel)
            return
        order = np.argsort(win, kind="stable")
        ws_sorted = win[order]
        starts = np.flatnonzero(np.r_[True, ws_sorted[1:] != ws_sorted[:-1]])
        for i, j, ws in zip(starts.tolist(), [*starts[1:].tolist(), len(order)], ws_sorted[starts].tolist(),
                            strict=True):
            idx = order[i:j]
            self._table(wins, det, int(ws)).add(a[:, idx], v.rows, sel[idx])

    @staticmethod
    def _table(wins: dict[int, Table], det: Detector, ws: int) -> Table:
        t = wins.get(ws)
        if t is None:
            t = wins[ws] = Table(light=det.light)
        return t

    def process(self, st: AlertsState, f: Features) -> None:
        rows = f.rows
        # capture points as indices into the state's own strings (index -1 stays -1)
        ns = len(f.strings)
        omap = np.full(ns + 1, -1, dtype=np.int64)
        used = np.zeros(ns + 1, dtype=bool)  # index -1 marks the last slot
        used[rows["origin"]] = True
        for i in np.flatnonzero(used[:ns]).tolist():
            omap[i] = st.strings.add(f.strings[i])
        # both keyings' rows in one view: dst_rows marks the destination view's, the rest the source view's
        v = View(f, omap, rows["view"] == VIEW_DST)
        sampled = rows["sample_rate"] > 1
        if sampled.any():  # which capture points sampled, by second (an alert counted from them says so)
            secs = rows["ts_ns"][sampled] // SECOND
            lo = int(secs.min())
            keys = np.unique((rows["origin"][sampled].astype(np.int64) << 40) | (secs - lo))
            for key in keys.tolist():
                o, sec = key >> 40, (key & ((1 << 40) - 1)) + lo
                if 0 <= o < ns:
                    st.sampled_at.add(f.strings[o], sec * SECOND, 1)
        for det in self.detectors.values():
            for a in det.select(v, st):
                self._add(st, det, v, a.sel, a.k, a.item, a.n, a.sub, a.s, a.f)

    # -- closing windows ------------------------------------------------------------------------

    def close(self, st: AlertsState, watermark_ns: int) -> list[Output]:
        out: list[Output] = []
        final = watermark_ns >= FOREVER
        limit = FOREVER if final else watermark_ns - self.grace_ns
        tables = sum(len(w) for w in st.windows.values())
        for name, det in self.detectors.items():
            w, step = self.rules.window_ns(name), self.rules.step_ns(name)
            wins = st.windows.get(name, {})
            if step == w:  # tumbling: each window's table is evaluated once, when it closes
                for ws in sorted(ws for ws in wins if ws + w <= limit):
                    firing = self._evaluate(st, det, wins.pop(ws))
                    out.extend(self._lifecycle(st, name, ws, firing))
                    st.closed_until[name] = max(st.closed_until.get(name, 0), ws + w)
            else:
                out.extend(self._slide(st, det, wins, w, step, limit))
            if not final:
                st.closed_until[name] = max(st.closed_until.get(name, 0), limit - limit % step)
                # windows without any traffic still close alerts that stopped firing
                last_closed = st.closed_until[name] - w
                out.extend(self._lifecycle(st, name, last_closed, {}))
        if final:  # the end of the input: what is still open is closed
            for key in sorted(st.open):
                a = st.open.pop(key)
                out.append(self._emit(st, a, 3, None))
        if st.strings.payload and sum(len(w) for w in st.windows.values()) < tables:
            st.strings.drop_payload(self._strings_used(st))  # those only the closed windows referred to
        st.losses.prune(limit)
        st.sampled_at.prune(limit)
        return out

    def lost(self, st: AlertsState, origin: str, t_ns: int, records: int) -> None:
        st.losses.add(origin, t_ns, records)

    @staticmethod
    def _strings_used(st: AlertsState) -> npt.NDArray[np.int64]:
        used = [t.strings_used() for wins in st.windows.values() for t in wins.values()]
        return np.concatenate(used) if used else np.zeros(0, np.int64)

    def _slide(self, st: AlertsState, det: Detector, hops: dict[int, Table], w: int, step: int,
               limit: int) -> list[Output]:
        """A hopping window: the tables hold one hop (``step``) each; every window of length ``w``
        that ends on a hop boundary at or before the limit, and holds a hop with traffic, is
        evaluated over the union of its hops, so a scan is judged the same wherever it starts
        relative to a boundary. Hops no later window can hold are dropped."""
        out: list[Output] = []
        done = st.closed_until.get(det.name, 0)  # windows ending here or before were evaluated
        ends = sorted({hs + k * step for hs in hops for k in range(1, w // step + 1)})
        for e in ends:
            if e <= done or e > limit:
                continue
            inside = [hops[hs] for hs in sorted(hops) if e - w <= hs < e]
            newest = hops.get(e - step)
            # a key fires when its window crosses the threshold and it sent in the newest hop: a
            # scan is raised once, when it crosses, and updated while it goes on, not re-reported
            # for every hop its old packets stay in the window
            firing = self._evaluate(st, det, Table.merged(inside), newest.cols["k"]) if newest is not None else {}
            out.extend(self._lifecycle(st, det.name, e - w, firing))
            st.closed_until[det.name] = max(st.closed_until.get(det.name, 0), e)
        for hs in [hs for hs in hops if hs + w <= st.closed_until.get(det.name, 0)]:
            del hops[hs]
        return out

    def _evaluate(self, st: AlertsState, det: Detector, t: Table,
                  recent: npt.NDArray[np.uint64] | None = None) -> dict[str, dict[str, Any]]:
        """Keys over the detector's threshold in one closed window (only those among ``recent``, when
        given): key text -> facts."""
        c = t.cols
        if len(c["k"]) == 0:
            return {}
        kinv, kg = group_index(c["k"])
        keys = kg.view()["k"]
        nk = len(keys)
        # distinct items per key: the (key, item) pairs over all capture points
        pinv, pairs = group_index(kinv, c["item"])
        distinct = np.bincount(pairs.view()["k"].astype(np.int64), minlength=nk)
        counted = self._nearest(c, pinv)
        if counted is not None:  # the same packets seen by several points count once
            if recent is None:  # (a sliding window's hops are judged again in every window that holds them)
                st.seen_nearer += int((~counted).sum())
            c = {**c, "n": np.where(counted, c["n"], 0), "b": np.where(counted, c["b"], 0)}
        n = np.bincount(kinv, c["n"], nk).astype(np.int64)
        b = np.bincount(kinv, c["b"], nk).astype(np.int64)
        fire = det.fire(Window(c, kinv, keys, n, b, distinct, st))
        if recent is not None:
            fire &= np.isin(keys, recent)
        out: dict[str, dict[str, Any]] = {}
        if fire.any():
            full = expand(t.with_samples())
            c = full if counted is None else {**full, "n": c["n"], "b": c["b"]}
        fj = np.flatnonzero(fire)
        for j in fj[np.argsort(keys[fj], kind="stable")].tolist():
            rows = np.flatnonzero(kinv == j)
            seen = rows
            if counted is not None:  # evidence from the groups counted; every point that saw the key named
                rows = rows[counted[rows]]
            out_key, facts = self._facts(st, det, c, rows, int(n[j]), int(b[j]), int(distinct[j]), seen)
            out[out_key] = facts
        return out

    @staticmethod
    def _nearest(c: dict[str, Any], pinv: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_] | None:
        """Which groups count, where several capture points counted the same (key, item). Points that
        counted the same flows (the same least flow hash, ``f``) saw the same packets along their path:
        they count once, the one that counted the most (the nearest the destination, by rank, among
        equals). Points that counted other flows add up: each host its share of a flood, each of a
        service address's hosts its clients. No TTL decides a count, so forged or expiring TTLs change
        nothing; and a host that writes records of flows of its own can add to a count, as any record
        it writes can, but not take away what others counted (to replace another point's figures it
        would have to name that point's least flow). None: every group counts."""
        o = c["o"]
        m = len(o)
        if m == 0 or not (o != o[0]).any():
            return None
        cinv, classes = group_index(pinv.astype(np.uint64), c["f"])
        nc = len(classes)
        if nc == m:  # each group counted flows of its own
            return None
        # per class, its group of the most packets, then of the greatest rank, then the first
        order = np.lexsort((-np.arange(m), c["r"], c["n"], cinv))
        cs = cinv[order]
        last = np.r_[cs[1:] != cs[:-1], True]
        counted = np.zeros(m, dtype=bool)
        counted[order[last]] = True
        return counted

    def _facts(self, st: AlertsState, det: Detector, c: dict[str, Any], rows: npt.NDArray[np.intp], n: int, b: int,
               distinct: int, seen: npt.NDArray[np.intp]) -> tuple[str, dict[str, Any]]:
        first = int(rows[np.argmin(c["t0"][rows])])
        src, dst = addr_text(c["src_addr"][first]), addr_text(c["dst_addr"][first])
        items = c["item"][rows]
        cnts = c["n"][rows]
        iu, iinv = np.unique(items, return_inverse=True)
        isum = np.bincount(iinv.ravel(), cnts, len(iu))
        top = np.lexsort((iu, -isum))[:TOP_EVIDENCE]
        ev_items = list(zip(iu[top].tolist(), isum[top].astype(np.int64).tolist(), strict=True))
        # the item of each evidence row as text
        item_text: dict[int, str] = {}
        for r in rows.tolist():
            it = int(c["item"][r])
            if it not in item_text:
                item_text[it] = det.item_text(c, r, it)
        seen_by = sorted({st.strings.items[int(o)] for o in c["o"][seen].tolist() if 0 <= o < len(st.strings.items)})
        sample = {"src": src, "dst": dst, "src_port": int(c["src_port"][first]), "dst_port": int(c["dst_port"][first]),
                  "protocol": int(c["protocol"][first]), "tcp_flags": int(c["tcp_flags"][first]),
                  "ttl": int(c["ttl"][first]), "wire_len": int(c["wire_len"][first])}
        e = Evidence(c, rows, first, src, dst, int(c["sub"][first]), n, b, distinct, st, sample)
        key, what = det.describe(e)
        t0, t1 = int(c["t0"][rows].min()), int(c["t1"][rows].max())
        lost = st.losses.per_point(t0, t1 + 1, seen_by)
        facts = {"count": n, "bytes": b, "distinct": distinct, "t0": t0, "t1": t1, "what": what, "sample": e.sample,
                 "seen_by": seen_by, "records_lost": min(sum(lost.values()), MAX_LOST), "lost_by": sorted(lost),
                 "sampled": st.sampled_at.within(seen_by, t0, t1 + 1) > 0,
                 "top": [{"value": item_text.get(v, str(v)), "count": k} for v, k in ev_items]}
        return key, facts

    def _lifecycle(self, st: AlertsState, det: str, ws: int, firing: dict[str, dict[str, Any]]) -> list[Output]:
        out: list[Output] = []
        step = self.rules.step_ns(det)
        sliding = step != self.rules.window_ns(det)
        for key in sorted(firing):
            facts = firing[key]
            ak = f"{det}|{key}"
            a = st.open.get(ak)
            if a is None:
                uid = hashlib.sha256(f"{det}|{key}|{ws}".encode()).hexdigest()[:32]
                a = st.open[ak] = OpenAlert(uid, det, key, ws, ws, facts["t0"], facts["t1"], facts["count"])
                st.alerts_raised += 1
                out.append(self._emit(st, a, 1, facts))
            else:
                a.last_window = ws
                a.last_seen = max(a.last_seen, facts["t1"])
                a.first_seen = min(a.first_seen, facts["t0"])
                # overlapping (sliding) windows count a packet more than once: keep the largest
                a.count = max(a.count, facts["count"]) if sliding else a.count + facts["count"]
                a.windows += 1
                out.append(self._emit(st, a, 2, facts))
        # alerts of this detector that stayed quiet long enough: closed
        for ak in sorted(k for k, a in st.open.items() if a.rule == det):
            a = st.open[ak]
            if a.key in firing:
                continue
            if ws - a.last_window >= self.rules.close_after_windows * step:
                del st.open[ak]
                out.append(self._emit(st, a, 3, None))
        return out

    def _emit(self, st: AlertsState, a: OpenAlert, activity: int, facts: dict[str, Any] | None) -> Output:
        doc = ocsf(a, activity, facts, self.rules.window_ns(a.rule), self.host, self.local)
        if self.fmt == "avro":
            buf = io.BytesIO()
            fastavro.writer(buf, _PARSED, [avro_record(doc)], codec="null")
            value = buf.getvalue()
        else:
            value = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        return Output(self.topic, a.uid.encode(), value,
                      [(H.RULE, a.rule.encode()), (H.ACTIVITY, str(activity).encode())], doc)

    # -- state ----------------------------------------------------------------------------------

    def dump(self, st: AlertsState) -> Any:
        return {
            "windows": {d: {str(ws): t.dump() for ws, t in wins.items()} for d, wins in st.windows.items()},
            "closed_until": st.closed_until,
            "open": {k: [a.uid, a.rule, a.key, a.first_window, a.last_window, a.first_seen, a.last_seen, a.count,
                         a.windows] for k, a in st.open.items()},
            "baselines": st.baselines.dump(),
            "extra_baselines": {k: b.dump() for k, b in st.extra_baselines.items()},
            "strings": st.strings.items, "late_records": st.late_records,
            "alerts_raised": st.alerts_raised, "seen_nearer": st.seen_nearer,
            "strings_free": st.strings.free, "payload_strings": sorted(st.strings.payload),
            "paths_folded": st.strings.folded, "losses": st.losses.dump(), "sampled_at": st.sampled_at.dump(),
        }

    def load(self, d: Any) -> AlertsState:
        return AlertsState(
            windows={det: {int(ws): Table.load(t) for ws, t in wins.items()} for det, wins in d["windows"].items()},
            closed_until={k: int(v) for k, v in d["closed_until"].items()},
            open={k: OpenAlert(v[0], v[1], v[2], int(v[3]), int(v[4]), int(v[5]), int(v[6]), int(v[7]), int(v[8]))
                  for k, v in d["open"].items()},
            baselines=Baselines.load(d["baselines"]),
            extra_baselines={k: Baselines.load(b) for k, b in d.get("extra_baselines", {}).items()},
            strings=StateStrings([str(x) for x in d["strings"]], [int(i) for i in d.get("strings_free", [])],
                                 self.max_paths, [int(i) for i in d.get("payload_strings", [])],
                                 int(d.get("paths_folded", 0))),
            late_records=int(d["late_records"]),
            alerts_raised=int(d["alerts_raised"]),
            seen_nearer=int(d.get("seen_nearer", 0)), losses=Losses.load(d.get("losses")),
            sampled_at=Losses.load(d.get("sampled_at")),
        )

    def figures(self, states: list[AlertsState]) -> dict[str, float]:
        return {"late_records": sum(s.late_records for s in states),
                "open_alerts": sum(len(s.open) for s in states),
                "open_windows": sum(len(w) for s in states for w in s.windows.values()),
                "paths_folded": sum(s.strings.folded for s in states),
                "capture_point_duplicates": sum(s.seen_nearer for s in states),
                "loss_marks_dropped": sum(s.losses.dropped + s.sampled_at.dropped for s in states),
                "paths": sum(len(s.strings.payload) for s in states)}

    # -- a snapshot over its size limit ---------------------------------------------------------

    def degrade(self, st: AlertsState) -> dict[str, Any]:
        """One step less detail in the state, for a snapshot that would exceed its size limit (the
        runner dumps again after each step): what was dropped, {} when nothing is left to drop. In
        order: the request paths of the open windows' samples (their alerts' evidence reads
        ``_OTHER``); then half the baselines' keys, down to MIN_BASELINE_KEYS (the least busy; a
        key that comes back starts its history again); then the open windows' sample rows per
        group, one per key and capture point kept (evidence and messages that count distinct sources
        read one per point)."""
        if st.strings.payload:
            gone = np.array(sorted(st.strings.payload), dtype=np.int64)
            other = st.strings.add(OTHER)
            n = sum(t.replace_strings(gone, other) for wins in st.windows.values() for t in wins.values())
            dropped = st.strings.drop_payload(np.zeros(0, np.int64))
            return {"dropped": "request paths", "paths": dropped, "samples": n}
        big = [b for b in (st.baselines, *st.extra_baselines.values()) if len(b) > MIN_BASELINE_KEYS]
        if big:
            before = sum(len(b) for b in big)
            for b in big:
                b.cap(max(MIN_BASELINE_KEYS, len(b) // 2))
            return {"dropped": "baseline keys", "keys": before - sum(len(b) for b in big)}
        rows = sum(t.lighten() for wins in st.windows.values() for t in wins.values())
        if rows:
            return {"dropped": "sample rows", "rows": rows}
        return {}
