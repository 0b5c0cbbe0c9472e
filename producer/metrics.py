"""The producer's Prometheus metrics: names and help texts (served by runtime.metrics)."""

# name -> (help, type); the snapshot function returns values for these names
COUNTERS = {
    "packets_seen": "Packets the capture programs saw (both directions; an egress GSO buffer counts once).",
    "egress_packets_seen": "The egress share of packets_seen.",
    "egress_records_captured": "Records the egress classifier put into the ring buffer.",
    "egress_ringbuf_full": "The egress share of ringbuf_full.",
    "records_captured": "Records read from the ring buffer.",
    "records_delivered": "Records acknowledged by Kafka.",
    "records_failed": "Records in batches Kafka rejected.",
    "ringbuf_full": "Records lost because the ring buffer was full.",
    "sampled_out": "Packets skipped by 1-in-N sampling.",
    "batches": "Packet-topic messages produced.",
    "bytes_delivered": "Bytes of packet-topic messages acknowledged.",
    "records_replayed": "Records delivered from the on-disk spool.",
    "spool_records_dropped": "Records the spool could not keep (full, disk errors) or Kafka refused for good on "
                             "replay (producer_stopped's spool_dropped_by_cause says why).",
    "spool_files_quarantined": "Spool files that could not be read back, renamed *.corrupt.",
    "records_redacted": "Records whose payload prefix had credentials redacted.",
    "records_payload_cleared": "Records whose payload was dropped as out of payload_ports/payload_networks.",
}
GAUGES = {
    "sample_rate": "1-in-N sampling rate in force.",
    "queue_messages": "Messages waiting in the Kafka producer's queue.",
    "ring_fill_ratio": "Fraction of the ring buffer holding unread records.",
    "records_pending": "Records captured, not yet delivered or given up.",
    "records_spooled": "Records of this run waiting in the on-disk spool.",
    "spool_bytes": "Bytes in the on-disk spool.",
    "latency_p50_seconds": "Capture-to-acknowledgement latency, median.",
    "latency_p99_seconds": "Capture-to-acknowledgement latency, 99th percentile.",
}
