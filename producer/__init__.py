"""pktstream producer: XDP ring buffer -> Avro batches -> Kafka."""

__version__ = "0.1.0"
