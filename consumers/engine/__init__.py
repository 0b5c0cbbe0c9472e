"""The stream engine: stage one (decode, featurize, re-key), stage two (state per partition), state
snapshots, event time and transactions; the apps plug in a ``runner.Processor``."""
