// SPDX-License-Identifier: GPL-2.0
/* pktstream XDP capture: one ring-buffer record per incoming packet.
 *
 * The program never drops: every path returns XDP_PASS. Every read of the
 * packet is preceded by a bounds check against data_end (the verifier demands
 * it, and it is also what keeps truncated frames from being misread).
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

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		*c += 1;
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

int xdp_capture(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	u32 zero = 0;

	count(CNT_PACKETS);

	u32 *rate = config.lookup(&zero);
	u32 sample_rate = rate && *rate > 1 ? *rate : 1;
	if (sample_rate > 1 && bpf_get_prandom_u32() % sample_rate != 0) {
		count(CNT_SAMPLED_OUT);
		return XDP_PASS;
	}

	struct pkt_record *r = events.ringbuf_reserve(sizeof(struct pkt_record));
	if (!r) {
		count(CNT_RINGBUF_FULL);
		return XDP_PASS;
	}

	/* Reserved memory is not zeroed: set every header field explicitly. */
	r->ts_ns = bpf_ktime_get_ns();
	__builtin_memset(r->src_addr, 0, 32);
	r->ifindex = ctx->ingress_ifindex;
	r->rx_queue = ctx->rx_queue_index;
	u32 linear = data_end - data;
	u32 wire = bpf_xdp_get_buff_len(ctx);
	r->wire_len = wire;
	r->sample_rate = sample_rate;
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
	r->_pad = 0;
	r->ethertype = 0;

	u32 off = sizeof(struct ethhdr);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		r->flags |= PKT_F_TRUNCATED;
		goto submit;
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
			goto submit;
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
			goto submit;
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
			goto submit;
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
			goto submit;
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
				goto submit;
			}
			struct ipv6_opt_hdr_ *eh = data + off;
			if ((void *)(eh + 1) > data_end) {
				r->flags |= PKT_F_TRUNCATED;
				r->protocol = nh;
				goto submit;
			}
			if (nh == IPPROTO_FRAGMENT) {
				struct ipv6_frag_hdr_ *fh = data + off;
				if ((void *)(fh + 1) > data_end) {
					r->flags |= PKT_F_TRUNCATED;
					r->protocol = nh;
					goto submit;
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
			goto submit;
		}
		if (off > 2048) {
			r->flags |= PKT_F_MALFORMED;
			goto submit;
		}
		l4off = off;
	} else {
		goto submit; /* not IP: ARP, LLDP, ... recorded with ethertype only */
	}

	if (l4off == 0)
		goto submit;
	off = parse_l4(r, data, data_end, l4off);
	if (off == 0)
		goto submit;

payload_from_off:;
	/* L4 payload: from off to the end of the IP datagram, but not past the
	 * frame (Ethernet padding after the datagram is not payload). */
	u32 end = ip_end < wire ? ip_end : wire;
	if (off >= end)
		goto submit;
	u32 plen = end - off;
	if (plen > 0xffff)
		plen = 0xffff;
	r->payload_len = plen;
#if PAYLOAD_BYTES > 0
	{
		u64 n = plen < PAYLOAD_BYTES ? plen : PAYLOAD_BYTES;
		/* The verifier needs n in [1, PAYLOAD_BYTES] on the very register
		 * passed to the helper; the empty asm stops clang from re-deriving n
		 * from plen after the check. */
		asm volatile("" : "+r"(n));
		if (n >= 1 && n <= PAYLOAD_BYTES) {
			if (bpf_xdp_load_bytes(ctx, off, r->payload, n) == 0)
				r->cap_len = n;
		}
	}
#endif

submit:
	events.ringbuf_submit(r, 0);
	count(CNT_RECORDS);
	return XDP_PASS;
}
