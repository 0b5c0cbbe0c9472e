-- pktstream into ClickHouse, one server (docs/clickhouse.md explains every table).
-- Placeholders, e.g. with envsubst(1):
--   KAFKA_BROKERS=kafka-1:9092,kafka-2:9092 PACKETS_TOPIC=pktstream.packets USAGE_TOPIC=pktstream.usage \
--   ALERTS_TOPIC=pktstream.alerts CONNECTIONS_TOPIC=pktstream.connections DNS_TOPIC=pktstream.dns \
--   HTTP_TOPIC=pktstream.http \
--   CONSUMER_GROUP=clickhouse-pktstream \
--   envsubst < single-node.sql | clickhouse-client --multiquery
-- Kafka's security settings (SASL/TLS) go in the server's <kafka> configuration, not here.

CREATE DATABASE IF NOT EXISTS pktstream;

-- The packet topic as it is: one Avro Object Container per message. Messages that do not decode
-- are not lost and do not stop the stream: kafka_handle_error_mode = 'stream' hands them to
-- packets_errors below.
CREATE TABLE pktstream.packets_queue
(
    seq Int64, ts_ns Int64, ifindex Int32, rx_queue Int32,
    src_addr FixedString(16), dst_addr FixedString(16),
    ip_version Int32, protocol Int32, src_port Int32, dst_port Int32, wire_len Int32, ttl Int32,
    tcp_flags Int32, frag_flags Int32, frag_offset Int32, vlan_outer Int32, vlan_inner Int32,
    ethertype Int32, flags Int32, sample_rate Int32, payload_len Int32, payload String,
    direction Int32, segments Int32
)
ENGINE = Kafka
SETTINGS kafka_broker_list = '${KAFKA_BROKERS}', kafka_topic_list = '${PACKETS_TOPIC}',
         kafka_group_name = '${CONSUMER_GROUP}-packets', kafka_format = 'Avro',
         kafka_handle_error_mode = 'stream', kafka_num_consumers = 1,
         input_format_avro_allow_missing_fields = 1;

-- Every record, 7 days. Addresses are IPv6 (IPv4 as ::ffff:a.b.c.d, as in the topic), and
-- src_ip and dst_ip give the text pktstream query shows.
CREATE TABLE pktstream.packets
(
    host LowCardinality(String), interface LowCardinality(String), run_id String,
    seq Int64, ts DateTime64(9, 'UTC'), ifindex UInt32, rx_queue UInt32,
    src_addr IPv6, dst_addr IPv6,
    src_ip String ALIAS replaceRegexpOne(toString(src_addr), '^::ffff:', ''),
    dst_ip String ALIAS replaceRegexpOne(toString(dst_addr), '^::ffff:', ''),
    ip_version UInt8, protocol UInt8, src_port UInt16, dst_port UInt16, wire_len UInt32, ttl UInt8,
    tcp_flags UInt8, frag_flags UInt8, frag_offset UInt16, vlan_outer UInt16, vlan_inner UInt16,
    ethertype UInt16, flags UInt16, sample_rate UInt32, payload_len UInt32, payload String CODEC(ZSTD(3)),
    direction UInt8, segments UInt16, kafka_partition UInt32, kafka_offset UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (host, ts)
TTL toDateTime(ts) + INTERVAL 7 DAY
SETTINGS ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW pktstream.packets_mv TO pktstream.packets AS
SELECT
    _key AS host,
    _headers.value[indexOf(_headers.name, 'pktstream.interface')] AS interface,
    _headers.value[indexOf(_headers.name, 'pktstream.run_id')] AS run_id,
    seq, fromUnixTimestamp64Nano(ts_ns, 'UTC') AS ts, ifindex, rx_queue,
    CAST(src_addr AS IPv6) AS src_addr, CAST(dst_addr AS IPv6) AS dst_addr,
    ip_version, protocol, src_port, dst_port, wire_len, ttl, tcp_flags, frag_flags, frag_offset,
    vlan_outer, vlan_inner, ethertype, flags, sample_rate, payload_len, payload, direction,
    greatest(segments, 1) AS segments, _partition AS kafka_partition, _offset AS kafka_offset
FROM pktstream.packets_queue
WHERE length(_error) = 0;

-- What did not decode, unchanged, with where it came from and why (30 days).
CREATE TABLE pktstream.packets_errors
(
    received DateTime('UTC'), topic LowCardinality(String), kafka_partition UInt32, kafka_offset UInt64,
    key String, error String, message String
)
ENGINE = MergeTree
ORDER BY (topic, kafka_partition, kafka_offset)
TTL received + INTERVAL 30 DAY;

CREATE MATERIALIZED VIEW pktstream.packets_errors_mv TO pktstream.packets_errors AS
SELECT now() AS received, _topic AS topic, _partition AS kafka_partition, _offset AS kafka_offset,
       _key AS key, _error AS error, _raw_message AS message
FROM pktstream.packets_queue
WHERE length(_error) > 0;

-- One-minute rollups per direction (0 ingress, 1 egress), 90 days. packets counts wire packets
-- (an egress GSO buffer counts its segments) and, like bytes, is an estimate of the wire when a run
-- sampled (each record counts sample_rate times); records is what the topic holds. SummingMergeTree adds
-- rows up when it merges: always query them with sum() and GROUP BY.
CREATE TABLE pktstream.packets_1m_host
(
    minute DateTime('UTC'), host LowCardinality(String), interface LowCardinality(String), direction UInt8,
    records UInt64, packets UInt64, bytes UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (host, interface, direction, minute)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW pktstream.packets_1m_host_mv TO pktstream.packets_1m_host AS
SELECT toStartOfMinute(ts) AS minute, host, interface, direction, count() AS records,
       sum(toUInt64(segments) * greatest(sample_rate, 1)) AS packets,
       sum(toUInt64(wire_len) * greatest(sample_rate, 1)) AS bytes
FROM pktstream.packets
GROUP BY minute, host, interface, direction;

CREATE TABLE pktstream.packets_1m_pair
(
    minute DateTime('UTC'), host LowCardinality(String), direction UInt8, src_addr IPv6, dst_addr IPv6,
    records UInt64, packets UInt64, bytes UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (host, direction, minute, src_addr, dst_addr)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW pktstream.packets_1m_pair_mv TO pktstream.packets_1m_pair AS
SELECT toStartOfMinute(ts) AS minute, host, direction, src_addr, dst_addr, count() AS records,
       sum(toUInt64(segments) * greatest(sample_rate, 1)) AS packets,
       sum(toUInt64(wire_len) * greatest(sample_rate, 1)) AS bytes
FROM pktstream.packets
GROUP BY minute, host, direction, src_addr, dst_addr;

CREATE TABLE pktstream.packets_1m_port
(
    minute DateTime('UTC'), host LowCardinality(String), direction UInt8, protocol UInt8, dst_port UInt16,
    records UInt64, packets UInt64, bytes UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (host, direction, minute, protocol, dst_port)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW pktstream.packets_1m_port_mv TO pktstream.packets_1m_port AS
SELECT toStartOfMinute(ts) AS minute, host, direction, protocol, dst_port, count() AS records,
       sum(toUInt64(segments) * greatest(sample_rate, 1)) AS packets,
       sum(toUInt64(wire_len) * greatest(sample_rate, 1)) AS bytes
FROM pktstream.packets
GROUP BY minute, host, direction, protocol, dst_port;

-- pktstream usage's windows (one Avro container per message, written in transactions: the Kafka
-- engine reads committed messages only). A window read twice (ClickHouse consumes at least once)
-- is one row after merges: query with FINAL for exact figures. seen_by is part of the key: an API
-- served by addresses that pktstream usage handles in different partitions has one row per window
-- from each (docs/usage.md, Limits); sum them.
CREATE TABLE pktstream.usage_queue
(
    api String, matched Bool, window_start_ms DateTime64(3, 'UTC'), window_s Int32, host String,
    port Int32, protocol String, requests Int64, partial_requests Int64, packets Int64, bytes Int64,
    new_connections Int64, methods Map(String, Int64), distinct_clients Int64,
    top_clients Array(Tuple(client String, requests Int64, packets Int64, bytes Int64)),
    seen_by Array(String), sampled Bool, records_lost Int64,
    response_packets Nullable(Int64), response_bytes Nullable(Int64), responses Nullable(Int64),
    unanswered Nullable(Int64), status_classes Map(String, Int64), status_codes Map(String, Int64),
    latency_buckets Array(Int64), latency_sum_us Nullable(Int64), latency_count Nullable(Int64),
    latency_p50_ms Nullable(Float64), latency_p90_ms Nullable(Float64), latency_p99_ms Nullable(Float64),
    error_rate Nullable(Float64)
)
ENGINE = Kafka
SETTINGS kafka_broker_list = '${KAFKA_BROKERS}', kafka_topic_list = '${USAGE_TOPIC}',
         kafka_group_name = '${CONSUMER_GROUP}-usage', kafka_format = 'Avro',
         kafka_handle_error_mode = 'stream';

CREATE TABLE pktstream.usage
(
    window_start DateTime64(3, 'UTC'), window_s UInt32, api String, matched Bool, host String,
    port UInt16, protocol LowCardinality(String), requests UInt64, partial_requests UInt64,
    packets UInt64, bytes UInt64, new_connections UInt64, methods Map(String, UInt64),
    distinct_clients UInt64,
    top_clients Array(Tuple(client String, requests UInt64, packets UInt64, bytes UInt64)),
    seen_by Array(String), sampled Bool, records_lost UInt64,
    -- the answers (docs/usage.md): null where the server's packets were not seen; the maps and the
    -- buckets are empty then
    response_packets Nullable(UInt64), response_bytes Nullable(UInt64), responses Nullable(UInt64),
    unanswered Nullable(UInt64), status_classes Map(String, UInt64), status_codes Map(String, UInt64),
    latency_buckets Array(UInt64), latency_sum_us Nullable(UInt64), latency_count Nullable(UInt64),
    latency_p50_ms Nullable(Float64), latency_p90_ms Nullable(Float64), latency_p99_ms Nullable(Float64),
    error_rate Nullable(Float64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_s, api, host, port, protocol, window_start, seen_by)
TTL toDateTime(window_start) + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW pktstream.usage_mv TO pktstream.usage AS
SELECT window_start_ms AS window_start, window_s, api, matched, host, port, protocol, requests,
       partial_requests, packets, bytes, new_connections, methods, distinct_clients, top_clients,
       seen_by, sampled, records_lost, response_packets, response_bytes, responses, unanswered, status_classes,
       status_codes, latency_buckets, latency_sum_us, latency_count, latency_p50_ms, latency_p90_ms,
       latency_p99_ms, error_rate
FROM pktstream.usage_queue
WHERE length(_error) = 0;

-- pktstream alerts' events (OCSF Detection Finding JSON). alert_events keeps every event (create,
-- update, close; one row per event id after merges); alerts keeps each alert's latest event.
CREATE TABLE pktstream.alerts_queue (document String)
ENGINE = Kafka
SETTINGS kafka_broker_list = '${KAFKA_BROKERS}', kafka_topic_list = '${ALERTS_TOPIC}',
         kafka_group_name = '${CONSUMER_GROUP}-alerts', kafka_format = 'JSONAsString', kafka_handle_error_mode = 'stream';

CREATE TABLE pktstream.alert_events
(
    time DateTime64(3, 'UTC'), event_uid String, uid String, rule LowCardinality(String),
    activity_id UInt8, severity_id UInt8, title String, technique LowCardinality(String),
    src_ip String, dst_ip String, dst_port UInt16, protocol UInt8, count UInt64,
    first_seen DateTime64(3, 'UTC'), last_seen DateTime64(3, 'UTC'), kafka_offset UInt64,
    document String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (rule, uid, event_uid)
TTL toDateTime(time) + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW pktstream.alert_events_mv TO pktstream.alert_events AS
SELECT
    fromUnixTimestamp64Milli(JSONExtractInt(document, 'time'), 'UTC') AS time,
    JSONExtractString(document, 'metadata', 'uid') AS event_uid,
    JSONExtractString(document, 'finding_info', 'uid') AS uid,
    JSONExtractString(document, 'unmapped', 'pktstream', 'rule') AS rule,
    JSONExtractUInt(document, 'activity_id') AS activity_id,
    JSONExtractUInt(document, 'severity_id') AS severity_id,
    JSONExtractString(document, 'finding_info', 'title') AS title,
    JSONExtractString(document, 'finding_info', 'attacks', 1, 'technique', 'uid') AS technique,
    JSONExtractString(document, 'evidences', 1, 'src_endpoint', 'ip') AS src_ip,
    JSONExtractString(document, 'evidences', 1, 'dst_endpoint', 'ip') AS dst_ip,
    JSONExtractUInt(document, 'evidences', 1, 'dst_endpoint', 'port') AS dst_port,
    JSONExtractUInt(document, 'evidences', 1, 'connection_info', 'protocol_num') AS protocol,
    JSONExtractUInt(document, 'count') AS count,
    fromUnixTimestamp64Milli(JSONExtractInt(document, 'finding_info', 'first_seen_time'), 'UTC') AS first_seen,
    fromUnixTimestamp64Milli(JSONExtractInt(document, 'finding_info', 'last_seen_time'), 'UTC') AS last_seen,
    _offset AS kafka_offset,
    document
FROM pktstream.alerts_queue
WHERE length(_error) = 0;

CREATE TABLE pktstream.alerts
(
    uid String, rule LowCardinality(String), activity_id UInt8, severity_id UInt8, title String,
    technique LowCardinality(String), src_ip String, dst_ip String, dst_port UInt16, protocol UInt8,
    count UInt64, first_seen DateTime64(3, 'UTC'), last_seen DateTime64(3, 'UTC'),
    time DateTime64(3, 'UTC'), kafka_offset UInt64, document String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY uid;

CREATE MATERIALIZED VIEW pktstream.alerts_mv TO pktstream.alerts AS
SELECT uid, rule, activity_id, severity_id, title, technique, src_ip, dst_ip, dst_port, protocol,
       count, first_seen, last_seen, time, kafka_offset, document
FROM pktstream.alert_events;

-- pktstream activity's conversation records (OCSF Network Activity JSON). connections keeps each
-- conversation's latest record (uid): its final one once it ended, the last Traffic update while it lasts.
CREATE TABLE pktstream.connections_queue (document String)
ENGINE = Kafka
SETTINGS kafka_broker_list = '${KAFKA_BROKERS}', kafka_topic_list = '${CONNECTIONS_TOPIC}',
         kafka_group_name = '${CONSUMER_GROUP}-connections', kafka_format = 'JSONAsString',
         kafka_handle_error_mode = 'stream';

CREATE TABLE pktstream.connections
(
    time DateTime64(3, 'UTC'), start_time DateTime64(3, 'UTC'), duration_ms UInt64, uid String,
    record_uid String, activity_id UInt8, conn_state LowCardinality(String), final UInt8, protocol UInt8,
    src_ip String, src_port UInt16, dst_ip String, dst_port UInt16, hostname String,
    packets_out UInt64, packets_in UInt64, bytes_out UInt64, bytes_in UInt64, community_id String,
    kafka_offset UInt64, document String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree(kafka_offset)
PARTITION BY toYYYYMM(start_time)
ORDER BY (src_ip, dst_ip, uid)
TTL toDateTime(time) + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW pktstream.connections_mv TO pktstream.connections AS
SELECT
    fromUnixTimestamp64Milli(JSONExtractInt(document, 'time'), 'UTC') AS time,
    fromUnixTimestamp64Milli(JSONExtractInt(document, 'start_time'), 'UTC') AS start_time,
    JSONExtractUInt(document, 'duration') AS duration_ms,
    JSONExtractString(document, 'connection_info', 'uid') AS uid,
    JSONExtractString(document, 'metadata', 'uid') AS record_uid,
    JSONExtractUInt(document, 'activity_id') AS activity_id,
    JSONExtractString(document, 'status_code') AS conn_state,
    JSONExtractBool(document, 'unmapped', 'pktstream', 'final') AS final,
    JSONExtractUInt(document, 'connection_info', 'protocol_num') AS protocol,
    JSONExtractString(document, 'src_endpoint', 'ip') AS src_ip,
    JSONExtractUInt(document, 'src_endpoint', 'port') AS src_port,
    JSONExtractString(document, 'dst_endpoint', 'ip') AS dst_ip,
    JSONExtractUInt(document, 'dst_endpoint', 'port') AS dst_port,
    JSONExtractString(document, 'dst_endpoint', 'hostname') AS hostname,
    JSONExtractUInt(document, 'traffic', 'packets_out') AS packets_out,
    JSONExtractUInt(document, 'traffic', 'packets_in') AS packets_in,
    JSONExtractUInt(document, 'traffic', 'bytes_out') AS bytes_out,
    JSONExtractUInt(document, 'traffic', 'bytes_in') AS bytes_in,
    JSONExtractString(document, 'unmapped', 'pktstream', 'community_id') AS community_id,
    _offset AS kafka_offset,
    document
FROM pktstream.connections_queue
WHERE length(_error) = 0 AND JSONExtractUInt(document, 'class_uid') = 4001;

-- pktstream activity's DNS lookup records (OCSF DNS Activity JSON): one row per lookup (record_uid), as the
-- Kafka engine may deliver a message twice and the Replacing table keeps one.
CREATE TABLE pktstream.dns_queue (document String)
ENGINE = Kafka
SETTINGS kafka_broker_list = '${KAFKA_BROKERS}', kafka_topic_list = '${DNS_TOPIC}',
         kafka_group_name = '${CONSUMER_GROUP}-dns', kafka_format = 'JSONAsString',
         kafka_handle_error_mode = 'stream';

CREATE TABLE pktstream.dns
(
    time DateTime64(3, 'UTC'), record_uid String, activity_id UInt8, answered UInt8, protocol UInt8,
    src_ip String, src_port UInt16, dst_ip String, dst_port UInt16, query_name String,
    query_type LowCardinality(String), dns_id UInt16, rcode_id Nullable(UInt8), rcode LowCardinality(String),
    latency_us Nullable(UInt64), answers Array(String), answer_count UInt16, answers_cut UInt8, community_id String,
    kafka_offset UInt64, document String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree(kafka_offset)
PARTITION BY toYYYYMM(time)
ORDER BY (query_name, record_uid)
TTL toDateTime(time) + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW pktstream.dns_mv TO pktstream.dns AS
SELECT
    fromUnixTimestamp64Milli(JSONExtractInt(document, 'time'), 'UTC') AS time,
    JSONExtractString(document, 'metadata', 'uid') AS record_uid,
    JSONExtractUInt(document, 'activity_id') AS activity_id,
    JSONExtractBool(document, 'unmapped', 'pktstream', 'answered') AS answered,
    JSONExtractUInt(document, 'connection_info', 'protocol_num') AS protocol,
    JSONExtractString(document, 'src_endpoint', 'ip') AS src_ip,
    JSONExtractUInt(document, 'src_endpoint', 'port') AS src_port,
    JSONExtractString(document, 'dst_endpoint', 'ip') AS dst_ip,
    JSONExtractUInt(document, 'dst_endpoint', 'port') AS dst_port,
    JSONExtractString(document, 'unmapped', 'pktstream', 'query_name') AS query_name,
    JSONExtractString(document, 'unmapped', 'pktstream', 'query_type_name') AS query_type,
    JSONExtractUInt(document, 'unmapped', 'pktstream', 'dns_id') AS dns_id,
    if(JSONHas(document, 'rcode_id'), JSONExtractUInt(document, 'rcode_id'), NULL) AS rcode_id,
    JSONExtractString(document, 'rcode') AS rcode,
    if(JSONHas(document, 'unmapped', 'pktstream', 'latency_us'),
       JSONExtractUInt(document, 'unmapped', 'pktstream', 'latency_us'), NULL) AS latency_us,
    arrayMap(a -> JSONExtractString(a, 'rdata'), JSONExtractArrayRaw(document, 'answers')) AS answers,
    JSONExtractUInt(document, 'unmapped', 'pktstream', 'answer_count') AS answer_count,
    JSONExtractBool(document, 'unmapped', 'pktstream', 'answers_cut') AS answers_cut,
    JSONExtractString(document, 'unmapped', 'pktstream', 'community_id') AS community_id,
    _offset AS kafka_offset,
    document
FROM pktstream.dns_queue
WHERE length(_error) = 0 AND JSONExtractUInt(document, 'class_uid') = 4003;

-- pktstream activity's HTTP exchange records (OCSF HTTP Activity JSON): one row per request and its
-- answer (record_uid), as the Kafka engine may deliver a message twice and the Replacing table keeps one.
CREATE TABLE pktstream.http_queue (document String)
ENGINE = Kafka
SETTINGS kafka_broker_list = '${KAFKA_BROKERS}', kafka_topic_list = '${HTTP_TOPIC}',
         kafka_group_name = '${CONSUMER_GROUP}-http', kafka_format = 'JSONAsString',
         kafka_handle_error_mode = 'stream';

CREATE TABLE pktstream.http
(
    time DateTime64(3, 'UTC'), record_uid String, activity_id UInt8, answered UInt8,
    src_ip String, src_port UInt16, dst_ip String, dst_port UInt16, method LowCardinality(String), host String,
    path String, user_agent String, status UInt16, latency_us Nullable(UInt64), request_length Nullable(Int64),
    response_length Nullable(Int64), api String, community_id String,
    kafka_offset UInt64, document String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree(kafka_offset)
PARTITION BY toYYYYMM(time)
ORDER BY (dst_ip, dst_port, record_uid)
TTL toDateTime(time) + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW pktstream.http_mv TO pktstream.http AS
SELECT
    fromUnixTimestamp64Milli(JSONExtractInt(document, 'time'), 'UTC') AS time,
    JSONExtractString(document, 'metadata', 'uid') AS record_uid,
    JSONExtractUInt(document, 'activity_id') AS activity_id,
    JSONExtractBool(document, 'unmapped', 'pktstream', 'answered') AS answered,
    JSONExtractString(document, 'src_endpoint', 'ip') AS src_ip,
    JSONExtractUInt(document, 'src_endpoint', 'port') AS src_port,
    JSONExtractString(document, 'dst_endpoint', 'ip') AS dst_ip,
    JSONExtractUInt(document, 'dst_endpoint', 'port') AS dst_port,
    JSONExtractString(document, 'unmapped', 'pktstream', 'method') AS method,
    JSONExtractString(document, 'unmapped', 'pktstream', 'host') AS host,
    JSONExtractString(document, 'http_request', 'url', 'path') AS path,
    JSONExtractString(document, 'http_request', 'user_agent') AS user_agent,
    JSONExtractUInt(document, 'http_response', 'code') AS status,
    if(JSONHas(document, 'unmapped', 'pktstream', 'latency_us'),
       JSONExtractUInt(document, 'unmapped', 'pktstream', 'latency_us'), NULL) AS latency_us,
    if(JSONHas(document, 'http_request', 'length'), JSONExtractInt(document, 'http_request', 'length'), NULL)
        AS request_length,
    if(JSONHas(document, 'http_response', 'length'), JSONExtractInt(document, 'http_response', 'length'), NULL)
        AS response_length,
    JSONExtractString(document, 'unmapped', 'pktstream', 'api') AS api,
    JSONExtractString(document, 'unmapped', 'pktstream', 'community_id') AS community_id,
    _offset AS kafka_offset,
    document
FROM pktstream.http_queue
WHERE length(_error) = 0 AND JSONExtractUInt(document, 'class_uid') = 4002;
