/* pktstream record layout: the one source of truth shared by the XDP program
 * and the Python producer (pktstream/schemas/record.py mirrors it; the test
 * tests/unit/test_record_layout.py compiles this header with the host C
 * compiler and proves that size and every offset are equal).
 *
 * Knobs are compile flags with defaults here, never pasted into the C text:
 *   -DPAYLOAD_BYTES=N   bytes of L4 payload copied per packet (0..256)
 */
#ifndef PKTSTREAM_H
#define PKTSTREAM_H

#include <linux/types.h>

#ifndef PAYLOAD_BYTES
#define PAYLOAD_BYTES 64
#endif

#if PAYLOAD_BYTES < 0 || PAYLOAD_BYTES > 256
#error "PAYLOAD_BYTES must be between 0 and 256"
#endif

/* The payload area is rounded up to 8 bytes so that every record, and thus
 * every ring-buffer slot (8-byte header + record), has the same 8-aligned
 * stride; the producer reads the ring as a strided array because of that. */
#define PAYLOAD_AREA (((PAYLOAD_BYTES) + 7) & ~7)

/* record.flags */
#define PKT_F_TRUNCATED   0x0001 /* the frame ended inside a header */
#define PKT_F_MALFORMED   0x0002 /* a header field is impossible (IHL < 5, doff < 5, ...) */
#define PKT_F_VLAN        0x0004 /* at least one 802.1Q/802.1ad tag */
#define PKT_F_IP_OPTIONS  0x0008 /* IPv4 header longer than 20 bytes */
#define PKT_F_IPV6_EXT    0x0010 /* IPv6 extension headers were walked */
#define PKT_F_FRAGMENT    0x0020 /* IPv4 or IPv6 fragment */
#define PKT_F_L4_SKIPPED  0x0040 /* L4 not parsed: non-first fragment, unknown protocol, too many ext headers */
#define PKT_F_MULTIBUF    0x0080 /* frame longer than its linear part (XDP multi-buffer) */

/* record.frag_flags */
#define PKT_FRAG_MF 0x01 /* more fragments */
#define PKT_FRAG_DF 0x02 /* IPv4 don't fragment */

/* record.direction */
#define DIR_INGRESS 0 /* XDP: arrived on the interface */
#define DIR_EGRESS  1 /* egress classifier: leaving through the interface */

/* Per-CPU counters (BPF_PERCPU_ARRAY "counters"), indices. Indices 0-3 count
 * both directions together; CNT_EGRESS + i counts the egress share of i. */
#define CNT_PACKETS      0 /* every packet (egress: socket buffer) the programs saw */
#define CNT_RECORDS      1 /* records submitted to the ring buffer */
#define CNT_RINGBUF_FULL 2 /* ring-buffer reservation failed: packet passed, record lost */
#define CNT_SAMPLED_OUT  3 /* skipped by 1-in-N sampling */
#define CNT_EGRESS       4
#define CNT_MAX          8

/* Config array (BPF_ARRAY "config"), indices; written by the producer. */
#define CFG_SAMPLE_RATE 0 /* 1-in-N sampling; 0 or 1 = every packet */
#define CFG_MAX         2

struct pkt_record {
	__u64 ts_ns;        /*  0: bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u8  src_addr[16]; /*  8: network byte order; IPv4 as ::ffff:a.b.c.d */
	__u8  dst_addr[16]; /* 24 */
	__u32 ifindex;      /* 40 */
	__u16 rx_queue;     /* 44: receive queue (ingress), transmit queue (egress) */
	__u16 segments;     /* 46: wire packets this record stands for: 1, or an egress GSO buffer's segment count */
	__u32 wire_len;     /* 48: whole frame length in bytes, Ethernet header included (egress GSO: the whole buffer) */
	__u32 sample_rate;  /* 52: 1-in-N sampling in force when captured */
	__u16 src_port;     /* 56: host order; ICMP/ICMPv6 type */
	__u16 dst_port;     /* 58: host order; ICMP/ICMPv6 code */
	__u16 payload_len;  /* 60: L4 payload bytes in this packet (IP length bounds it) */
	__u16 frag_offset;  /* 62: fragment offset in bytes */
	__u16 vlan_outer;   /* 64: outer VLAN TCI, 0 if untagged */
	__u16 vlan_inner;   /* 66: inner VLAN TCI, 0 if none */
	__u16 flags;        /* 68: PKT_F_* */
	__u16 cap_len;      /* 70: valid bytes in payload[] (the length of the Avro payload field) */
	__u8  ip_version;   /* 72: 4, 6 or 0 (not IP) */
	__u8  protocol;     /* 73: IP protocol / IPv6 upper-layer next header */
	__u8  ttl;          /* 74: TTL or hop limit */
	__u8  tcp_flags;    /* 75: FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80 */
	__u8  frag_flags;   /* 76: PKT_FRAG_* */
	__u8  direction;    /* 77: DIR_* */
	__u16 ethertype;    /* 78: host order, innermost EtherType */
	__u8  payload[PAYLOAD_AREA]; /* 80 */
};

#endif /* PKTSTREAM_H */
