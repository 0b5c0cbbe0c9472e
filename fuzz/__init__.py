"""Coverage-guided fuzzing of pktstream's untrusted-input paths (issue 23).

Targets (``campaign.TARGETS``): libFuzzer harnesses in C for the compiled loops (``c/``: the block
decoder, the payload parsers, the redaction loop) and atheris targets in Python (``targets.py``:
``read_container``, ``featurize`` and the payload paths through Python, over a sanitizer build of
the same C sources). Seeds are in ``corpus/<target>/`` (written by ``corpus.py``), dictionaries
in ``dict/``.

    python -m fuzz.campaign --seconds 300      # every target in turn (scripts/fuzz.sh)
    tests/unit/test_fuzz.py                    # a short campaign in the test suite
"""
