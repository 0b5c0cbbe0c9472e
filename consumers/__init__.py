"""pktstream consumers: read the packet topic."""
