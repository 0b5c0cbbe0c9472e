// SPDX-License-Identifier: GPL-2.0
/* pktstream capture: one ring-buffer record per packet, in both directions.
 *
 * Two programs share one parser, one record and the same maps:
 *   xdp_capture  at the XDP hook: every incoming frame (direction 0)
 *   tc_egress    a classifier on the egress path (TCX link, or a clsact
 *                filter on kernels before 6.6): every outgoing socket buffer
 *                (direction 1), which can be several wire packets (GSO)
 *
 * Neither program ever drops: XDP returns XDP_PASS, the classifier
 * TC_ACT_UNSPEC (TCX_NEXT: the next program, or the default, decides). Every
 * read of the packet is preceded by a bounds check against data_end (the
 * verifier demands it, and it is also what keeps truncated frames from being
 * misread).
 *
 * Compile flags (defaults in pktstream.h or below):
 *   PAYLOAD_BYTES  payload prefix copied per record (0..256)
 *   RINGBUF_PAGES  ring-buffer size in pages (power of two)
 *   PIN_COUNTERS   bpffs path to pin the counters map at (optional)
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>

#include "pktstream.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 4096 /* 16 MiB with 4 KiB pages */
#endif

/* IPv6 extension headers walked before giving up on L4 (bounded loop). */
#define MAX_EXT_HDRS 6

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD

/* Bytes the classifier makes sure are in the linear part before parsing:
 * Ethernet + 2 VLAN tags + IPv6 + extension headers + TCP with options. */
#define PULL_BYTES 192

#ifndef TC_ACT_UNSPEC
#define TC_ACT_UNSPEC (-1)
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#ifdef PIN_COUNTERS
/* Pinned in bpffs (PIN_COUNTERS is its path): the counters outlive a producer that is killed,
 * so that the next one can account for the dead run's packets exactly. */
BPF_TABLE_PINNED("percpu_array", u32, u64, counters, CNT_MAX, PIN_COUNTERS);
#else
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
#endif
BPF_ARRAY(config, u32, CFG_MAX);

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

struct ipv6_opt_hdr_ {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_hdr_ {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

static __always_inline void count1(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		*c += 1;
}

/* The totals (both directions), and the egress share on its own. */
static __always_inline void count(u32 idx, u8 direction)
{
	count1(idx);
	if (direction == DIR_EGRESS)
		count1(idx + CNT_EGRESS);
}

/* Parse the L4 header at offset off; fill ports/flags and return the offset of
 * the L4 payload, or 0 if L4 was not parsed. */
static __always_inline u32 parse_l4(struct pkt_record *r, void *data, void *data_end, u32 off)
{
	/* The offset is bounded by the callers (< 4096) so that the verifier can
	 * track data + off; re-assert it here for the verifier. */
	if (off > 4096)
		return 0;
	void *l4 = data + off;

	switch (r->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end) {
			r->flags |= PKT_F_TRUNCATED;
			return 0;
		}
		r->src_port = bpf_ntohs(th->source);
		r->dst_port = bpf_ntohs(th->dest);
		r->tcp_flags = ((u8 *)th)[13];
		u32 doff = th->doff;
		if (doff < 5) {
			r->flags |= PKT_F_MALFORMED;
			return 0;
		}
		return off + doff * 4;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end) {
			r->flags |= PKT_F_TRUNCATED;
			return 0;
		}
		r->src_port = bpf_ntohs(uh->source);
		r->dst_port = bpf_ntohs(uh->dest);
		return off + sizeof(*uh);
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type, code, checksum, 4 bytes of rest-of-header */
		u8 *ih = l4;
		if ((void *)(ih + 8) > data_end) {
			r->flags |= PKT_F_TRUNCATED;
			return 0;
		}
		r->src_port = ih[0];
		r->dst_port = ih[1];
		return off + 8;
	}
	default:
		r->flags |= PKT_F_L4_SKIPPED;
		return 0;
	}
}

/* Sampling and the ring-buffer reservation, with the counters. */
static __always_inline struct pkt_record *reserve(u8 direction)
{
	u32 zero = 0;

	count(CNT_PACKETS, direction);

	u32 *rate = config.lookup(&zero);
	u32 sample_rate = rate && *rate > 1 ? *rate : 1;
	if (sample_rate > 1 && bpf_get_prandom_u32() % sample_rate != 0) {
		count(CNT_SAMPLED_OUT, direction);
		return NULL;
	}

	struct pkt_record *r = events.ringbuf_reserve(sizeof(struct pkt_record));
	if (!r) {
		count(CNT_RINGBUF_FULL, direction);
		return NULL;
	}
	r->sample_rate = sample_rate;
	return r;
}

/* Fill every header field of r from the frame [data, data_end) whose whole
 * length is wire. Returns the offset of the L4 payload in the frame and sets
 * r->payload_len, or returns 0 when there is no payload to copy. */
static __always_inline u32 parse(struct pkt_record *r, void *data, void *data_end, u32 wire)
{
	/* Reserved memory is not zeroed: set every header field explicitly. */
	r->ts_ns = bpf_ktime_get_ns();
	__builtin_memset(r->src_addr, 0, 32);
	u32 linear = data_end - data;
	r->wire_len = wire;
	r->src_port = 0;
	r->dst_port = 0;
	r->payload_len = 0;
	r->frag_offset = 0;
	r->vlan_outer = 0;
	r->vlan_inner = 0;
	r->flags = wire > linear ? PKT_F_MULTIBUF : 0;
	r->cap_len = 0;
	r->ip_version = 0;
	r->protocol = 0;
	r->ttl = 0;
	r->tcp_flags = 0;
	r->frag_flags = 0;
	r->ethertype = 0;

	u32 off = sizeof(struct ethhdr);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		r->flags |= PKT_F_TRUNCATED;
		return 0;
	}
	u16 proto = bpf_ntohs(eth->h_proto);

	/* Up to two VLAN tags (802.1ad outer, 802.1Q inner), unrolled. */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != ETH_P_8021Q_ && proto != ETH_P_8021AD_)
			break;
		struct vlan_hdr_ *vh = data + off;
		if ((void *)(vh + 1) > data_end) {
			r->flags |= PKT_F_TRUNCATED;
			r->ethertype = proto;
			return 0;
		}
		r->flags |= PKT_F_VLAN;
		if (i == 0)
			r->vlan_outer = bpf_ntohs(vh->tci);
		else
			r->vlan_inner = bpf_ntohs(vh->tci);
		proto = bpf_ntohs(vh->proto);
		off += sizeof(*vh);
	}
	r->ethertype = proto;

	u32 l4off = 0;      /* offset of the L4 header, 0 = none */
	u32 ip_end = 0;     /* offset just past the IP datagram (IP length) */

	if (proto == ETH_P_IP_) {
		struct iphdr *iph = data + off;
		if ((void *)(iph + 1) > data_end) {
			r->flags |= PKT_F_TRUNCATED;
			return 0;
		}
		r->ip_version = 4;
		r->protocol = iph->protocol;
		r->ttl = iph->ttl;
		/* IPv4-mapped IPv6: ::ffff:a.b.c.d */
		r->src_addr[10] = 0xff;
		r->src_addr[11] = 0xff;
		r->dst_addr[10] = 0xff;
		r->dst_addr[11] = 0xff;
		__builtin_memcpy(&r->src_addr[12], &iph->saddr, 4);
		__builtin_memcpy(&r->dst_addr[12], &iph->daddr, 4);
		u32 ihl = iph->ihl * 4;
		u16 fo = bpf_ntohs(iph->frag_off);
		r->frag_offset = (fo & 0x1fff) * 8;
		r->frag_flags = ((fo & 0x2000) ? PKT_FRAG_MF : 0) | ((fo & 0x4000) ? PKT_FRAG_DF : 0);
		if (fo & 0x3fff)
			r->flags |= PKT_F_FRAGMENT;
		u32 tot = bpf_ntohs(iph->tot_len);
		if (ihl < 20 || tot < ihl) {
			r->flags |= PKT_F_MALFORMED;
			return 0;
		}
		if (ihl > 20)
			r->flags |= PKT_F_IP_OPTIONS;
		ip_end = off + tot;
		if (fo & 0x1fff) {
			r->flags |= PKT_F_L4_SKIPPED; /* non-first fragment: no L4 header */
			/* payload of a non-first fragment is raw L4 data */
			l4off = 0;
			off += ihl;
			goto payload_from_off;
		}
		l4off = off + ihl;
	} else if (proto == ETH_P_IPV6_) {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > data_end) {
			r->flags |= PKT_F_TRUNCATED;
			return 0;
		}
		r->ip_version = 6;
		r->ttl = ip6->hop_limit;
		__builtin_memcpy(r->src_addr, &ip6->saddr, 16);
		__builtin_memcpy(r->dst_addr, &ip6->daddr, 16);
		ip_end = off + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		u8 nh = ip6->nexthdr;
		off += sizeof(*ip6);
		int done = 0;
#pragma unroll
		for (int i = 0; i < MAX_EXT_HDRS; i++) {
			if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS &&
			    nh != IPPROTO_FRAGMENT && nh != IPPROTO_AH) {
				done = 1;
				break;
			}
			r->flags |= PKT_F_IPV6_EXT;
			/* keep off bounded for the verifier; real stacks stay far below */
			if (off > 2048) {
				r->flags |= PKT_F_MALFORMED;
				return 0;
			}
			struct ipv6_opt_hdr_ *eh = data + off;
			if ((void *)(eh + 1) > data_end) {
				r->flags |= PKT_F_TRUNCATED;
				r->protocol = nh;
				return 0;
			}
			if (nh == IPPROTO_FRAGMENT) {
				struct ipv6_frag_hdr_ *fh = data + off;
				if ((void *)(fh + 1) > data_end) {
					r->flags |= PKT_F_TRUNCATED;
					r->protocol = nh;
					return 0;
				}
				u16 fo = bpf_ntohs(fh->frag_off);
				r->flags |= PKT_F_FRAGMENT;
				r->frag_offset = fo & 0xfff8;
				r->frag_flags = (fo & 1) ? PKT_FRAG_MF : 0;
				nh = fh->nexthdr;
				off += 8;
				if (fo & 0xfff8) {
					/* non-first fragment: what follows is raw L4 data */
					r->protocol = nh;
					r->flags |= PKT_F_L4_SKIPPED;
					goto payload_from_off;
				}
			} else if (nh == IPPROTO_AH) {
				nh = eh->nexthdr;
				off += ((u32)eh->hdrlen + 2) * 4;
			} else {
				nh = eh->nexthdr;
				off += ((u32)eh->hdrlen + 1) * 8;
			}
		}
		r->protocol = nh;
		if (!done) {
			r->flags |= PKT_F_L4_SKIPPED;
			return 0;
		}
		if (off > 2048) {
			r->flags |= PKT_F_MALFORMED;
			return 0;
		}
		l4off = off;
	} else {
		return 0; /* not IP: ARP, LLDP, ... recorded with ethertype only */
	}

	if (l4off == 0)
		return 0;
	off = parse_l4(r, data, data_end, l4off);
	if (off == 0)
		return 0;

payload_from_off:;
	/* L4 payload: from off to the end of the IP datagram, but not past the
	 * frame (Ethernet padding after the datagram is not payload). */
	u32 end = ip_end < wire ? ip_end : wire;
	if (off >= end)
		return 0;
	u32 plen = end - off;
	if (plen > 0xffff)
		plen = 0xffff;
	r->payload_len = plen;
	return off;
}

/* The payload prefix: n in [1, PAYLOAD_BYTES] bytes at off, through the
 * program type's own helper (it reads non-linear data too). */
#if PAYLOAD_BYTES > 0
#define COPY_PAYLOAD(load_bytes, ctx, r, off)                                        \
	do {                                                                         \
		u64 n = (r)->payload_len < PAYLOAD_BYTES ? (r)->payload_len : PAYLOAD_BYTES; \
		/* The verifier needs n in [1, PAYLOAD_BYTES] on the very register      \
		 * passed to the helper; the empty asm stops clang from re-deriving n \
		 * from payload_len after the check. */                                 \
		asm volatile("" : "+r"(n));                                          \
		if ((off) && n >= 1 && n <= PAYLOAD_BYTES) {                         \
			if (load_bytes((ctx), (off), (r)->payload, n) == 0)          \
				(r)->cap_len = n;                                    \
		}                                                                    \
	} while (0)
#else
#define COPY_PAYLOAD(load_bytes, ctx, r, off) do { } while (0)
#endif

int xdp_capture(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	struct pkt_record *r = reserve(DIR_INGRESS);
	if (!r)
		return XDP_PASS;
	r->ifindex = ctx->ingress_ifindex;
	r->rx_queue = ctx->rx_queue_index;
	r->segments = 1;
	r->direction = DIR_INGRESS;
	u32 off = parse(r, data, data_end, bpf_xdp_get_buff_len(ctx));
	COPY_PAYLOAD(bpf_xdp_load_bytes, ctx, r, off);
	events.ringbuf_submit(r, 0);
	count(CNT_RECORDS, DIR_INGRESS);
	return XDP_PASS;
}

int tc_egress(struct __sk_buff *skb)
{
	/* Headers outside the linear part (rare on egress: the stack builds
	 * them there) are pulled in, so that the parser sees them directly. */
	u32 want = skb->len < PULL_BYTES ? skb->len : PULL_BYTES;
	if ((u32)(skb->data_end - skb->data) < want)
		bpf_skb_pull_data(skb, want);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	struct pkt_record *r = reserve(DIR_EGRESS);
	if (!r)
		return TC_ACT_UNSPEC;
	r->ifindex = skb->ifindex;
	r->rx_queue = skb->queue_mapping;
	u32 segs = skb->gso_segs;
	r->segments = segs > 1 ? (segs > 0xffff ? 0xffff : segs) : 1;
	r->direction = DIR_EGRESS;
	u32 off = parse(r, data, data_end, skb->len);
	if (skb->vlan_present) {
		/* a tag the NIC will insert (VLAN offload) is outside the data: it is the outermost */
		r->vlan_inner = r->vlan_outer;
		r->vlan_outer = skb->vlan_tci;
		r->flags |= PKT_F_VLAN;
	}
	COPY_PAYLOAD(bpf_skb_load_bytes, skb, r, off);
	events.ringbuf_submit(r, 0);
	count(CNT_RECORDS, DIR_EGRESS);
	return TC_ACT_UNSPEC;
}
