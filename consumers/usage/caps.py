"""Bounded API names: which uncatalogued names keep a usage row of their own in a window.

Traffic chooses the names the catalog does not know (Host headers, paths), so the rows of one
window (a minute, or an hour) of one partition are capped. A name is counted per server (the
destination ``address:port``); such a (name, server) pair keeps a row of its own only while

* it is among the ``per_server`` pairs of its server with the smallest hash, and
* among the pairs that are, it is among the ``total`` with the smallest hash.

The rest of a server's traffic is counted in one row ``<address>:<port>/_OTHER``, for at most
``total`` servers (again those with the smallest hash); the other servers' in one row ``_OTHER``.
Catalogued APIs are never folded.

Ranking by a hash rather than by arrival makes the rows of a window depend only on the set of
names in it, never on the order or the batches in which they came: a replay, a restart, another
batch size give the same rows. A pair that keeps its row holds it from its first packet (a pair
that will be folded never had one; one that loses its place has its row merged into its server's
``_OTHER`` row, and never gets one back in that window), so a named row's counts are exact and the
``_OTHER`` rows hold exactly the rest. An hour applies the same rule to its minutes' rows, so it is
the exact roll-up of them.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Any

from pktstream.consumers.catalog import OTHER, ApiRef
from pktstream.consumers.engine.features import StringTable

# uncatalogued API names with a row of their own per window and partition: per server, and in all
# (which is also the number of servers with an _OTHER row)
MAX_APIS_PER_SERVER = 1000
MAX_APIS = 10_000
Key = tuple[str, str]  # a usage row: (API name, server "address:port"); catalogued APIs have server ""
GLOBAL: Key = (OTHER, "")  # the row of the servers past the cap
SEP = "\x1f"  # between name and server in a key as text (a server never holds it; a name may: split at the last)


def fold_name(server: str) -> str:
    """The name of a server's row of folded names."""
    return f"{server}/{OTHER}"


def is_fold(key: Key) -> bool:
    return key[0].endswith(OTHER) and (key == GLOBAL or (key[1] != "" and key[0] == fold_name(key[1])))


def key_text(key: Key) -> str:
    return f"{key[0]}{SEP}{key[1]}"


def key_of(text: str) -> Key:
    """A key from its text; a plain name (a snapshot older than the caps) is a server-less key."""
    name, sep, server = text.rpartition(SEP)
    return (name, server) if sep else (text, "")


def rank(text: str) -> int:
    """A 64-bit hash of the text, the same in every process (Python's hash() of a str is not)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def fold_ref(key: Key) -> ApiRef:
    """What a row of folded names says about itself: the server's port; protocol tcp (UDP traffic is one
    catch-all name per server, never more than its cap)."""
    port = key[1].rpartition(":")[2]
    return ApiRef(key[0], "", int(port) if port.isdigit() else 0, "tcp", False)


class Admission:
    """The (name, server) pairs of one window with a row of their own, and the servers with a row of
    folded names (see the module's docstring). ``place`` admits the pairs of a batch and says which row
    each goes to; rows that lost their place since the last call are in ``moves`` (from, to), in the
    order they must be merged.

    Only the admitted pairs are kept (they are the window's rows): a pair is among its server's
    ``per_server`` smallest exactly when fewer than that many of the server's admitted pairs are
    smaller (the smaller ones that are not admitted are past the total, and so is the pair), and a
    pair that enters its server's smallest pushes the server's largest out, so the number of those
    below any pair never falls: what is refused once stays refused."""

    __slots__ = ("admitted", "heap", "moves", "per", "per_server", "s_heap", "servers", "total")

    def __init__(self, per_server: int, total: int) -> None:
        self.per_server = per_server
        self.total = total
        self.admitted: dict[int, Key] = {}  # rank -> pair, of the pairs with a row
        self.heap: list[int] = []  # their ranks negated (a max-heap), and ranks no longer admitted (skipped)
        self.per: dict[str, list[int]] = {}  # server -> its admitted pairs' ranks, negated (a max-heap)
        self.servers: dict[str, int] = {}  # servers with a row of folded names -> rank
        self.s_heap: list[tuple[int, str]] = []  # (-rank, server) of those
        self.moves: list[tuple[Key, Key]] = []

    def __len__(self) -> int:
        return len(self.admitted)

    def fold_of(self, server: str) -> Key:
        return (fold_name(server), server) if server in self.servers else GLOBAL

    def place(self, keys: list[Key]) -> list[Key]:
        """Each key's row once all of them are admitted (a catalogued key, server "", is its own row)."""
        ranks = [rank(key_text(k)) if k[1] and not is_fold(k) else -1 for k in keys]
        for k, r in zip(keys, ranks, strict=True):
            if k[1]:
                self._server(k[1])
                if r >= 0:
                    self._pair(k, r)
        out = []
        for k, r in zip(keys, ranks, strict=True):
            if (not k[1] and k != GLOBAL) or r in self.admitted:
                out.append(k)
            else:
                out.append(GLOBAL if k == GLOBAL else self.fold_of(k[1]))
        return out

    def _server(self, server: str) -> None:
        if server in self.servers:
            return
        r = rank(server)
        if len(self.servers) >= self.total:
            top_r, top = self.s_heap[0]
            if r > -top_r:
                return
            heapq.heappop(self.s_heap)
            del self.servers[top]
            self.moves.append(((fold_name(top), top), GLOBAL))
        heapq.heappush(self.s_heap, (-r, server))
        self.servers[server] = r

    def _top(self) -> int:
        """The largest admitted rank (stale heap entries dropped on the way)."""
        while -self.heap[0] not in self.admitted:
            heapq.heappop(self.heap)
        return -self.heap[0]

    def _drop(self, r: int) -> None:
        """Admitted rank r, its server's largest, leaves: its row goes to the server's _OTHER row."""
        key = self.admitted.pop(r)
        hs = self.per[key[1]]
        heapq.heappop(hs)
        if not hs:
            del self.per[key[1]]
        self.moves.append((key, self.fold_of(key[1])))

    def _pair(self, key: Key, r: int) -> None:
        if r in self.admitted:
            return
        hs = self.per.get(key[1])
        if hs is not None and len(hs) >= self.per_server:
            if r > -hs[0]:
                return  # the server has per_server smaller ones
            self._drop(-hs[0])  # it takes the place of its server's largest: the total stays
        elif len(self.admitted) >= self.total:
            top = self._top()
            if r > top:
                return
            self._drop(top)
        heapq.heappush(self.heap, -r)
        heapq.heappush(self.per.setdefault(key[1], []), -r)
        self.admitted[r] = key

    def shrink(self, per_server: int, total: int) -> None:
        """Smaller caps (a snapshot over its limit): the pairs and servers past them lose their rows.
        (Pairs refused before are not taken back: from then on the window keeps to the caps but no
        longer follows the rule to the letter.)"""
        self.per_server = per_server
        for server in sorted(self.per):
            while server in self.per and len(self.per[server]) > per_server:
                self._drop(-self.per[server][0])
        while len(self.admitted) > total:
            self._drop(self._top())
        self.total = max(1, min(total, len(self.admitted)))
        while len(self.servers) > total:
            _r, server = heapq.heappop(self.s_heap)
            del self.servers[server]
            self.moves.append(((fold_name(server), server), GLOBAL))

    def take_moves(self) -> list[tuple[Key, Key]]:
        out, self.moves = self.moves, []
        return out

    def dump(self) -> list[Any]:
        """The caps and the servers; the admitted pairs are the window's rows (see load)."""
        return [self.per_server, self.total, sorted(self.servers)]

    @classmethod
    def load(cls, d: list[Any], rows: list[Key]) -> Admission:
        a = cls(int(d[0]), int(d[1]))
        for server in d[-1]:
            r = rank(server)
            a.servers[server] = r
            a.s_heap.append((-r, server))
        heapq.heapify(a.s_heap)
        for k in rows:  # every admitted pair has its row, and a row of a pair was admitted
            if k[1] and not is_fold(k):
                r = rank(key_text(k))
                a.admitted[r] = k
                a.heap.append(-r)
                a.per.setdefault(k[1], []).append(-r)
        heapq.heapify(a.heap)
        for hs in a.per.values():
            heapq.heapify(hs)
        return a


class WaitingNames(StringTable):
    """The (name, server) pairs that connections and waiting requests refer to (the flow table, the
    pairing queue), as keys in text, numbered. Catalogued names are always kept; of the others at most
    ``limit`` at once: past that a new pair is taken as its server's row of folded names (counted in
    ``folded``), and past twice the limit as the ``_OTHER`` row. Pairs nothing refers to any more are
    dropped when windows close (``drop``); their numbers are given out again."""

    def __init__(self, items: list[str] | None = None, free: list[int] | None = None, limit: int = 1 << 62,
                 folded: int = 0) -> None:
        super().__init__(items, free)
        self.limit = limit
        self.folded = folded

    def add_pair(self, name: str, server: str, catalogued: bool) -> int:
        text = key_text((name, "" if catalogued else server))
        i = self.index.get(text)
        if i is not None:
            return i
        if not catalogued and len(self) >= self.limit:
            self.folded += 1
            fold = key_text((fold_name(server), server))
            if fold in self.index or len(self) < 2 * self.limit:  # the servers' own rows: as many again
                return self.add(fold)
            return self.add(key_text(GLOBAL))
        return self.add(text)

    def key(self, i: int) -> Key:
        return key_of(self.items[i])
