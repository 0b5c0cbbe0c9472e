"""What both sides share, knowing neither: Kafka client helpers, logging, the metrics server, the
error tree, the compiled loops' loader, the local broker, and the ``pktstream`` command."""
