"""``pktstream usage``: per-API usage per minute and hour."""
