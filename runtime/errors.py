"""pktstream's exception tree. Only the entry point turns these into an exit."""


class PktstreamError(Exception):
    """Base of every error pktstream reports to its user."""


class ConfigError(PktstreamError):
    """One or more invalid configuration values; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


class PrivilegeError(PktstreamError):
    """The process lacks the capabilities to load and attach the XDP program."""


class InterfaceError(PktstreamError):
    """The interface does not exist or cannot take the XDP program."""


class BpfLoadError(PktstreamError):
    """The XDP program failed to compile, load or attach."""


class KafkaUnavailableError(PktstreamError):
    """The Kafka cluster cannot be reached, or a topic cannot be created."""


class LocalKafkaError(PktstreamError):
    """The embedded local broker cannot be resolved, formatted or started."""
