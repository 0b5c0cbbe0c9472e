"""``pktstream activity``: conversation records (OCSF Network Activity) from the packet stream."""

MAX_CONVERSATIONS = 500_000  # open conversations per partition (about 300 bytes each): the default
