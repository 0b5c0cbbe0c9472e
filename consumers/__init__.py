"""pktstream consumers: read the topics. ``engine`` runs stateful apps exactly once; ``usage`` and
``alerts`` are those apps; ``tools`` read topics as they are (tail, audit)."""
