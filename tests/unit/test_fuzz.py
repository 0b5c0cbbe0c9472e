"""A short fuzz campaign: every target of fuzz/ (fuzz.campaign.TARGETS: the C harnesses of the
block decoder, the payload parsers and the redaction loop; read_container, featurize and the
payload paths under atheris over a sanitizer build) built from the current sources into a
temporary directory and run for a bounded time each (PKTSTREAM_TEST_FUZZ_SECONDS, default 6:
about a minute and a quarter for all). Passes when no input crashed, tripped a sanitizer, failed a check or
blew the memory limit. The long campaign is scripts/fuzz.sh."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz import campaign, targets
from tests.support.helpers import require

SECONDS = int(os.environ.get("PKTSTREAM_TEST_FUZZ_SECONDS", "6"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[campaign.Build]:
    missing = campaign.missing_tools()
    require(not missing, "fuzzing needs " + "; ".join(missing) + " (scripts/test-tools.sh, the [test] extras)")
    out = tmp_path_factory.mktemp("fuzz-build")
    yield campaign.build(out, campaign.TARGETS)
    shutil.rmtree(out, ignore_errors=True)


def _tail(path: Path | None, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path else ""


@pytest.mark.parametrize("name", [t.name for t in campaign.TARGETS])
def test_fuzz_target_finds_nothing(built: campaign.Build, name: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    r = campaign.run(campaign.BY_NAME[name], built, SECONDS, tmp_path / "out", tmp_path / "corpus")
    with capsys.disabled():
        print(f"\n{campaign.table([r])}")
    assert r.executions > 0, f"{name} did not run:\n{_tail(r.log)}"
    assert r.ok, (f"{name}: {r.summary}\n{_tail(r.log)}\ninputs: {[p.name for p in r.findings]} "
                  f"(python -m fuzz.campaign --targets {name} --reproduce FILE shows the report again)")


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seed_corpus_replays_cleanly(name: str) -> None:
    """The committed seeds of the Python targets pass, without a fuzzer (fuzz/corpus.py writes them)."""
    seeds = sorted((campaign.SEEDS / name).iterdir())
    assert seeds
    for p in seeds:
        targets.TARGETS[name](p.read_bytes())


def test_container_seeds_are_readable() -> None:
    """The container seeds still decode: a corpus the decoder refuses at the door explores little."""
    for p in sorted((campaign.SEEDS / "container").iterdir()):
        batch = targets.container_batch(targets.Input(p.read_bytes()))
        assert batch is not None, f"{p.name} does not decode"
        assert batch.n > 0 or p.name.endswith("_empty"), p.name
        targets.check_batch(batch)


def test_relayed_seeds_read() -> None:
    """The relayed seeds hold records of two capture points that read, beside the ones set aside."""
    from pktstream.consumers.engine.wirein import WireReader
    from pktstream.consumers.relay.relay import relayed_schema

    wr = WireReader()
    wr._writers[(targets.RELAYED_ID, "relayed")] = relayed_schema()
    wr._unknown[(targets.OTHER_ID, "relayed")] = float("inf")
    seed = (campaign.SEEDS / "relayed" / "cut").read_bytes()
    origins, bad, n = wr.relayed(targets.relayed_values(targets.Input(seed)))
    assert n == 5 and sorted(o.host for o in origins) == ["host-a", "host-b"] and list(bad) == [5]
