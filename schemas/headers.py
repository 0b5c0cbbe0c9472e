"""Names of the Kafka message headers and Object Container metadata keys pktstream writes
(docs/topics.md describes each). Every writer and reader takes the names from here."""

# packet topic: message headers (the first four are also container metadata keys)
HOST = "pktstream.host"  # host id (also the message key)
INTERFACE = "pktstream.interface"
RUN_ID = "pktstream.run_id"  # one producer run
PAYLOAD_BYTES = "pktstream.payload_bytes"  # container metadata: the payload prefix the run captured
SCHEMA_FP = "pktstream.schema_fp"  # CRC-64-AVRO fingerprint of the writer's schema
RECORDS = "pktstream.records"  # records in the message
RECORDS_EGRESS = "pktstream.records_egress"  # of which egress records (the header is absent when there are none)
SEQ_FIRST = "pktstream.seq_first"  # the run's sequence numbers of the first and last record
SEQ_LAST = "pktstream.seq_last"
TS_LAST = "pktstream.ts_last"  # the newest record's event time (ns): audit measures the host's clock with it
RINGBUF_FULL = "pktstream.ringbuf_full"  # records lost (ring buffer full) since the run's previous message

# a consumer app's repartition topic
SRC = "pktstream.src"  # the packet partition a feature batch came from
PROGRESS = "pktstream.progress"  # how far that partition's event time had got (ns)
LOST = "pktstream.lost"  # a capture point's ring-buffer losses: JSON [origin, event time (ns), records]
SNAPSHOT_PART = "pktstream.snapshot.part"  # state topic: "GENERATION/INDEX/PARTS" of a snapshot in parts (before 12-07)
SNAPSHOT_BLOCK = "pktstream.snapshot.block"  # state topic: a snapshot's block, named by its digest (hex)
SNAPSHOT_MANIFEST = "pktstream.snapshot.manifest"  # state topic: a snapshot's list of blocks (its generation)

# dead-letter topics
DLQ_REASON = "pktstream.dlq.reason"
DLQ_TOPIC = "pktstream.dlq.topic"
DLQ_PARTITION = "pktstream.dlq.partition"
DLQ_OFFSET = "pktstream.dlq.offset"
DLQ_CONSUMER = "pktstream.dlq.consumer"
DLQ_TRUNCATED = "pktstream.dlq.truncated"  # the value was cut to fit the topic: its original size

# output topics
RULE = "pktstream.rule"  # alerts: the detector
ACTIVITY = "pktstream.activity"  # alerts: 1 create, 2 update, 3 close
WINDOW_S = "pktstream.window_s"  # usage: 60 (minutes) or 3600 (hours)
