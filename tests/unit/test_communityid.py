"""Community ID v1 against Corelight's reference implementation (the ``communityid`` package):
the spec's own examples, both directions of every conversation, and random tuples of every
protocol the records carry."""

from __future__ import annotations

import ipaddress
import random

import pytest

from pktstream.consumers.engine.communityid import community_id
from tests.support.communityid_ref import reference

# the spec's baseline (community-id-spec/baseline/baseline_deflt.json), as Zeek and Suricata print them
SPEC = [
    (("128.232.110.120", "66.35.250.204", 6, 34855, 80), "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (("66.35.250.204", "128.232.110.120", 6, 80, 34855), "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (("192.168.0.89", "192.168.0.1", 1, 8, 0), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (("192.168.0.1", "192.168.0.89", 1, 0, 0), "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (("fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 58, 135, 0), "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (("fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 58, 136, 0), "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
]


@pytest.mark.parametrize(("tpl", "want"), SPEC)
def test_the_specs_examples(tpl: tuple[str, str, int, int, int], want: str) -> None:
    assert community_id(*tpl) == want == reference(*tpl)


def _addr(rng: random.Random, v6: bool) -> str:
    if v6:
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


def test_random_tuples_of_every_protocol_equal_the_reference_both_ways() -> None:
    rng = random.Random(7)
    for i in range(4000):
        v6 = i % 2 == 1
        proto = rng.choice([6, 17, 132, 58 if v6 else 1, 47, 50])
        src, dst = _addr(rng, v6), _addr(rng, v6)
        if rng.random() < 0.05:
            dst = src  # one address: the ports decide the order
        if proto in (1, 58):
            table = [0, 8, 13, 14, 3, 11, 5] if proto == 1 else [128, 129, 135, 136, 1, 3, 133, 134]
            sport, dport = rng.choice(table), rng.randrange(0, 16)
        else:
            sport, dport = rng.randrange(65536), rng.randrange(65536)
        seed = rng.choice([0, 0, 1, 65535])
        got = community_id(src, dst, proto, sport, dport, seed)
        assert got == reference(src, dst, proto, sport, dport, seed), (src, dst, proto, sport, dport, seed)
        if proto not in (1, 58):
            assert community_id(dst, src, proto, dport, sport, seed) == got  # the answer's direction
        got_packed = community_id(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, proto,
                                  sport, dport, seed)
        assert got_packed == got


def test_mixed_families_are_refused() -> None:
    with pytest.raises(ValueError):
        community_id("10.0.0.1", "::1", 6, 1, 2)


def test_an_alert_sample_without_an_ip_pair_has_none() -> None:
    from pktstream.consumers.alerts.ocsf import sample_community_id

    ok = {"src": "10.0.0.1", "dst": "10.0.0.2", "protocol": 6, "src_port": 1, "dst_port": 2}
    assert sample_community_id(ok) == reference("10.0.0.1", "10.0.0.2", 6, 1, 2)
    assert sample_community_id({**ok, "protocol": 0, "src": "::", "dst": "::"}) == ""  # not IP
    assert sample_community_id({**ok, "dst": "::1"}) == ""  # two families
    assert sample_community_id({**ok, "src": "not an address"}) == ""
    assert sample_community_id({**ok, "src_port": float("inf")}) == ""
    assert sample_community_id({"src": "10.0.0.1"}) == ""
