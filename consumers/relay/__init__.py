"""``pktstream relay``: the packet topic in the schema-registry wire format."""
