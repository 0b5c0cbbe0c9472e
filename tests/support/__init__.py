"""What tests and benchmarks share: hosts in namespaces, the broker, traffic generators, app runners."""
