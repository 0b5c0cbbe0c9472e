from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from tests.support.helpers import NetnsHost, cleanup_stale, create_host, destroy_host, require, running_broker

TEST_KAFKA_PORT = int(os.environ.get("PKTSTREAM_TEST_KAFKA_PORT", "19092"))

# Everything a test run writes under /tmp (broker data, spools, producers' state, pytest's own
# tmp_path) goes into one directory, removed when the run ends.
_TMP_ROOT = tempfile.mkdtemp(prefix="pktstream-test-")


def pytest_configure(config: pytest.Config) -> None:
    tempfile.tempdir = _TMP_ROOT
    os.environ["TMPDIR"] = _TMP_ROOT  # and the processes the tests start
    if not config.option.basetemp:
        config.option.basetemp = os.path.join(_TMP_ROOT, "pytest")
    # the compiled capture programs (producer/bpfcache.py) of this run, shared by its producers and
    # kernel tests and removed with the rest: a test run neither reads nor leaves a user's cache
    cache = os.path.join(_TMP_ROOT, "cache")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    os.environ["PKTSTREAM_CACHE_DIR"] = cache


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_TMP_ROOT, ignore_errors=True)

# CI replays a fixed set of generated examples (the same on every run), so that a run is
# reproducible; developers' runs draw new ones and widen the search over time.
# No per-example deadline: on a loaded 2-core machine a first example that imports or compiles
# something took 0.4-0.8 s and failed a property that holds.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def root() -> None:
    require(os.geteuid() == 0, "needs root (XDP, network namespaces)")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka broker: the one PKTSTREAM_TEST_BOOTSTRAP names, else a local one started here."""
    named = os.environ.get("PKTSTREAM_TEST_BOOTSTRAP")
    if named:
        yield named
        return
    with running_broker(TEST_KAFKA_PORT, "kafka") as lk:
        yield lk.bootstrap


@pytest.fixture(scope="session")
def _clean_netns(root: None) -> None:
    cleanup_stale()


@pytest.fixture
def make_host(_clean_netns: None) -> Iterator[Callable[..., NetnsHost]]:
    """Factory of test hosts (namespace + veth); all are removed after the test."""
    made: list[NetnsHost] = []

    def make(ipv6: bool = False) -> NetnsHost:
        h = create_host(index=len(made), ipv6=ipv6)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            destroy_host(h.ns, h.host_if)


@pytest.fixture
def test_host(make_host: Callable[..., NetnsHost]) -> NetnsHost:
    return make_host()
