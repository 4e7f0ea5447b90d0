/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Parsers for the XDP programs. Each checks one header's lengths against the end of the frame
 * and returns PARSE_OK to go on, or the counter slot that ends the packet with XDP_PASS (enum
 * sluice_xdp_counter).
 *
 * They must load without CAP_PERFMON (the systemd unit has CAP_BPF and CAP_NET_ADMIN, and
 * gateway/tests/xdp_fixtures.rs proves the load with only those), and be fast when loaded that
 * way. Two verifier rules for such a loader shape them:
 *
 *  - a packet pointer may move by constants only ("pointer arithmetic ... prohibited for
 *    !root"), never by a header length read from the packet;
 *  - every write to the stack is followed by a Spectre v4 barrier (nospec, an lfence): the
 *    first version of these parsers, with its headers copied to the stack, paid ~45 ns per
 *    frame for them.
 *
 * So the common frames, whose headers all sit at constant offsets from the network header nh
 * (itself 14 bytes into the frame, or 18 behind one VLAN tag), are read in place: IPv4 without
 * options (UDP 20 bytes after nh) and IPv6 whose next header is UDP (40). Only IPv4 options and
 * IPv6 extension headers, which put UDP at a variable offset, take a slow path: BPF
 * subprograms that keep a scalar offset and copy each header out of the frame with
 * bpf_xdp_load_bytes (which does its own bounds check). Lengths are compared with the frame
 * length from bpf_xdp_get_buff_len. Whatever the parsers learn, and the keys of the map lookups
 * that follow, go to a per-CPU scratch map value instead of the stack (map value writes get no
 * barrier). `sluice-bench xdp-parse` measures the result.
 *
 * Malformed headers (a frame too short for a header, IHL < 5, a length field pointing past the
 * frame or below the header, a UDP length under 8 or beyond the IP payload) are passed and
 * counted as PASS_MALFORMED: the kernel's own validation drops them and counts them in its
 * standard statistics, and XDP never steers a packet whose lengths it cannot trust.
 */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "sluice_xdp_shared.h"

#define PARSE_OK (-1)

struct eth_hdr_ {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

struct ipv4_hdr_ {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6_hdr_ {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ipv6_ext_ {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8-byte units, not counting the first 8 */
};

struct udp_hdr_ {
	__be16 source;
	__be16 dest;
	__be16 len;
	__be16 check;
};

_Static_assert(sizeof(struct eth_hdr_) == ETH_HDR_LEN, "Ethernet header");
_Static_assert(sizeof(struct vlan_hdr_) == VLAN_HDR_LEN, "802.1Q tag");
_Static_assert(sizeof(struct ipv4_hdr_) == IPV4_MIN_HDR_LEN, "IPv4 header");
_Static_assert(sizeof(struct ipv6_hdr_) == IPV6_HDR_LEN, "IPv6 header");
_Static_assert(sizeof(struct udp_hdr_) == UDP_HDR_LEN, "UDP header");

/*
 * What the parsers learn about a packet, and the keys of the map lookups that follow: the
 * programs' working memory, one per CPU (an XDP program runs to completion on its CPU).
 */
struct parse_scratch {
	__u32 slot; /* the counter slot the packet moves: key of the counters */
	union {
		/* Key of tunnel_prefixes; .addr, the destination (IPv4 as ::ffff:a.b.c.d), is the
		 * key of local_addrs. */
		struct sluice_prefix key;
		struct {
			__u32 prefixlen;
			__u32 addr[SLUICE_XDP_ADDR_LEN / 4]; /* the same bytes as 32-bit words */
		} words;
	} dst;
	__u16 dport;          /* UDP destination port, host order */
	__u16 payload_len;    /* UDP length minus the UDP header */
	__u32 wg;             /* the first WG_HEADER_LEN bytes of the UDP payload, wire order */
	__u8 wg_present;      /* wg holds them: the frame is long enough */
	__u8 ipv6;            /* dst is an IPv6 destination (else IPv4's, mapped) */
	/* The slow paths' state, kept here across bpf_xdp_load_bytes calls. */
	__u8 next;        /* IPv6: the next header */
	__u32 port_word;  /* dport / 64: key of udp_ports */
	__u32 len;        /* bytes in the frame */
	__u32 rem;        /* bytes in the frame from the network header on (scratch_rem) */
	__u32 off;        /* offset of the next header */
	__u32 l4_len;     /* bytes of IP payload from the next header on */
	__u32 ext_total;  /* IPv6: bytes of extension headers walked */
	union {           /* bpf_xdp_load_bytes' target */
		struct ipv4_hdr_ ip;
		struct ipv6_ext_ ext;
		struct udp_hdr_ udp;
	} copy;
};

_Static_assert(__builtin_offsetof(struct parse_scratch, dst.key.addr) ==
		       __builtin_offsetof(struct parse_scratch, dst.words.addr),
	       "the address as bytes and as words");
_Static_assert(sizeof(__u32) == WG_HEADER_LEN, "the WireGuard header is one 32-bit word");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct parse_scratch);
} scratch SEC(".maps");

/* Lookup keys that must be in memory but are never written: .rodata, so no stack write. */
static const __u32 SCRATCH_KEY = 0;

/* This CPU's scratch; NULL cannot happen (key 0 of a one-entry array). */
static __always_inline struct parse_scratch *scratch_get(void)
{
	return bpf_map_lookup_elem(&scratch, &SCRATCH_KEY);
}

/*
 * s->rem, read from memory where it is needed: kept in a register from parse_eth on, it
 * pushes other values onto the stack, where each write costs a Spectre v4 barrier.
 */
static __always_inline __u32 scratch_rem(const struct parse_scratch *s)
{
	return *(const volatile __u32 *)&s->rem;
}

/* Adds one to slot `slot` of the per-CPU counter array `map`. */
static __always_inline void count_in(void *map, struct parse_scratch *s, __u32 slot)
{
	s->slot = slot;
	__u64 *n = bpf_map_lookup_elem(map, &s->slot);
	if (n)
		*n += 1; /* per-CPU slot: no other writer */
}

/*
 * A frame being parsed, from its network (IP) header on. nh is a packet pointer at a constant
 * offset from the frame's start on each path (ETH_HDR_LEN, or ETH_HDR_LEN + VLAN_HDR_LEN), so
 * the parsers read headers at constant offsets from it.
 */
struct frame {
	struct xdp_md *ctx;
	void *nh;         /* the network header */
	void *end;        /* the end of the frame's data */
	__be16 ethertype; /* of the network header, network order */
};

/*
 * The packet pointer p + off (off a constant), opaque to the optimiser. Code inlined twice with
 * two different constants (one VLAN tag or none; UDP after IPv4 or IPv6) must not be merged
 * into one copy with a variable offset, which the verifier refuses to a loader without
 * CAP_PERFMON; inline asm is never merged, so neither is what reads through its result.
 */
static __always_inline void *pkt_at(void *p, const __u32 off)
{
	void *q = p + off;
	asm volatile("" : "+r"(q));
	return q;
}

/*
 * Ethernet at the start of the frame and at most one 802.1Q tag: PARSE_OK with f set up at the
 * network header, or the pass reason.
 */
static __always_inline int parse_eth(struct frame *f, struct parse_scratch *s,
				     struct xdp_md *ctx)
{
	f->ctx = ctx;
	__u64 len = (__u32)bpf_xdp_get_buff_len(ctx);
	void *data = (void *)(long)ctx->data;
	f->end = (void *)(long)ctx->data_end;
	struct eth_hdr_ *eth = data;
	if ((void *)(eth + 1) > f->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	__be16 proto = eth->proto;
	if (proto == bpf_htons(ETHERTYPE_QINQ))
		return SLUICE_XDP_CNT_PASS_VLAN_STACKED;
	if (proto == bpf_htons(ETHERTYPE_VLAN)) {
		struct vlan_hdr_ *vlan = data + ETH_HDR_LEN;
		if ((void *)(vlan + 1) > f->end)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		proto = vlan->proto;
		if (proto == bpf_htons(ETHERTYPE_VLAN) || proto == bpf_htons(ETHERTYPE_QINQ))
			return SLUICE_XDP_CNT_PASS_VLAN_STACKED;
		f->nh = pkt_at(data, ETH_HDR_LEN + VLAN_HDR_LEN);
		s->rem = len - (ETH_HDR_LEN + VLAN_HDR_LEN);
	} else {
		f->nh = pkt_at(data, ETH_HDR_LEN);
		s->rem = len - ETH_HDR_LEN;
	}
	f->ethertype = proto;
	return PARSE_OK;
}

/*
 * The IPv4 header ip (its fixed part; rem bytes of the frame from its start on) is sane, and
 * its options and datagram lie within the frame.
 */
static __always_inline int check_ipv4(__u32 rem, const struct ipv4_hdr_ *ip, __u32 *hdr_len,
				      __u32 *tot_len)
{
	__u8 ver_ihl = ip->ver_ihl;
	*hdr_len = (ver_ihl & 0x0f) * 4;
	if ((ver_ihl >> 4) != 4 || *hdr_len < IPV4_MIN_HDR_LEN)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	if (*hdr_len > rem)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*tot_len = bpf_ntohs(ip->tot_len);
	if (*tot_len < *hdr_len || *tot_len > rem)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	return PARSE_OK;
}

/*
 * The IPv6 base header ip6 (whole in the frame; rem bytes of the frame from its start on) is
 * version 6, its payload in the frame.
 */
static __always_inline int check_ipv6(__u32 rem, const struct ipv6_hdr_ *ip6,
				      __u32 *payload_len)
{
	if ((bpf_ntohl(ip6->ver_tc_flow) >> 28) != 6)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*payload_len = bpf_ntohs(ip6->payload_len);
	if (IPV6_HDR_LEN + *payload_len > rem)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	return PARSE_OK;
}

/* The destination ::ffff:a.b.c.d for the IPv4 address v4. */
static __always_inline void set_dst_v4(struct parse_scratch *s, __be32 v4)
{
	s->dst.words.addr[0] = 0;
	s->dst.words.addr[1] = 0;
	s->dst.words.addr[2] = bpf_htonl(0x0000ffff);
	s->dst.words.addr[3] = v4;
}

/* The destination of an IPv6 header (in the frame). */
static __always_inline void set_dst_v6(struct parse_scratch *s, const struct ipv6_hdr_ *ip6)
{
	const __u32 *a = (const __u32 *)ip6->daddr; /* 4-byte aligned in the header */
	s->dst.words.addr[0] = a[0];
	s->dst.words.addr[1] = a[1];
	s->dst.words.addr[2] = a[2];
	s->dst.words.addr[3] = a[3];
}

/* The destination is ::ffff:a.b.c.d: as an IPv6 destination never a real address, never ours. */
static __always_inline int dst_is_v4_mapped(const struct parse_scratch *s)
{
	return (s->dst.words.addr[0] | s->dst.words.addr[1] |
		(s->dst.words.addr[2] ^ bpf_htonl(0x0000ffff))) == 0;
}

/* The UDP length must cover the header and fit in the IP payload (l4_len bytes). */
static __always_inline int check_udp(struct parse_scratch *s, __be16 len, __be16 dest,
				     __u32 l4_len)
{
	__u32 udp_len = bpf_ntohs(len);
	if (udp_len < UDP_HDR_LEN || udp_len > l4_len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	s->dport = bpf_ntohs(dest);
	s->payload_len = udp_len - UDP_HDR_LEN;
	return PARSE_OK;
}

/* Fast path: the UDP header at the constant offset `at` from nh, and the payload's first bytes. */
static __always_inline int parse_udp_at(struct parse_scratch *s, const struct frame *f,
					const __u32 at, __u32 l4_len)
{
	struct udp_hdr_ *udp = pkt_at(f->nh, at);
	/* One bounds check for both headers in the common case. */
	if ((void *)udp + UDP_HDR_LEN + WG_HEADER_LEN <= f->end) {
		s->wg = *(const __u32 *)(udp + 1);
		s->wg_present = 1;
	} else {
		if ((void *)(udp + 1) > f->end)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		s->wg_present = 0;
	}
	return check_udp(s, udp->len, udp->dest, l4_len);
}

/*
 * The slow paths, for UDP at a variable offset, are BPF subprograms (__noinline): their
 * registers and stack stay out of the fast path's. They take their input in s: s->off is the
 * offset of the next header from nh, s->rem the frame's bytes from nh on.
 */

/* s->off from nh to the start of the frame; s->len the frame's length. */
static __always_inline void slow_path_start(struct parse_scratch *s, struct xdp_md *ctx)
{
	s->len = bpf_xdp_get_buff_len(ctx);
	s->off += s->len - s->rem;
}

/* The UDP header at the frame offset s->off, with s->l4_len bytes of IP payload from there. */
static __always_inline int parse_udp_copy(struct parse_scratch *s, struct xdp_md *ctx)
{
	if (bpf_xdp_load_bytes(ctx, s->off, &s->copy.udp, sizeof(s->copy.udp)))
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	int r = check_udp(s, s->copy.udp.len, s->copy.udp.dest, s->l4_len);
	if (r != PARSE_OK)
		return r;
	s->wg_present = !bpf_xdp_load_bytes(ctx, s->off + UDP_HDR_LEN, &s->wg, sizeof(s->wg));
	return PARSE_OK;
}

/*
 * IPv4 after its lengths were checked (ip: its fixed header, in the frame or a copy), then UDP
 * at the constant offset IPV4_MIN_HDR_LEN from nh (fast path, f set) or copied from s->off
 * (slow path, f NULL). Fragments (MF set or offset nonzero) are left to the kernel to
 * reassemble.
 */
static __always_inline int parse_ipv4_rest(struct parse_scratch *s, const struct frame *f,
					   struct xdp_md *ctx, const struct ipv4_hdr_ *ip,
					   __u32 l4_len)
{
	if (ip->frag_off & bpf_htons(IPV4_FRAG_MF | IPV4_FRAG_OFFSET))
		return SLUICE_XDP_CNT_PASS_FRAGMENT;
	set_dst_v4(s, ip->daddr);
	s->ipv6 = 0;
	if (ip->protocol != IPPROTO_UDP_)
		return SLUICE_XDP_CNT_PASS_NOT_UDP;
	if (f)
		return parse_udp_at(s, f, IPV4_MIN_HDR_LEN, l4_len);
	s->l4_len = l4_len;
	return parse_udp_copy(s, ctx);
}

/*
 * Slow path: an IPv4 header whose first byte is not 0x45 (version 4, IHL 5): options, or a
 * wrong version or IHL. Its fixed part is in the frame at s->off = 0 from nh.
 */
static __noinline int parse_ipv4_slow(struct xdp_md *ctx, struct parse_scratch *s)
{
	slow_path_start(s, ctx);
	if (bpf_xdp_load_bytes(ctx, s->off, &s->copy.ip, sizeof(s->copy.ip)))
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	__u32 hdr_len = 0, tot_len = 0;
	int r = check_ipv4(s->rem, &s->copy.ip, &hdr_len, &tot_len);
	if (r != PARSE_OK)
		return r;
	s->off += hdr_len;
	return parse_ipv4_rest(s, (const struct frame *)0, ctx, &s->copy.ip, tot_len - hdr_len);
}

static __always_inline int is_ipv6_ext(__u8 next)
{
	return next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_;
}

/*
 * Slow path: walk hop-by-hop, routing and destination options headers from s->off (at most
 * IPV6_EXT_MAX_WALK of them; a fragment header means a fragment, which the kernel reassembles),
 * s->next being the first one's type and s->l4_len the IPv6 payload length; then UDP.
 */
static __noinline int parse_ipv6_ext_udp(struct xdp_md *ctx, struct parse_scratch *s)
{
	slow_path_start(s, ctx);
	s->ext_total = 0;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX_WALK; i++) {
		if (s->next == IPPROTO_FRAGMENT_)
			return SLUICE_XDP_CNT_PASS_FRAGMENT;
		if (!is_ipv6_ext(s->next))
			break;
		if (bpf_xdp_load_bytes(ctx, s->off, &s->copy.ext, sizeof(s->copy.ext)))
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		__u32 ext_len = ((__u32)s->copy.ext.hdrlen + 1) * IPV6_EXT_MIN_LEN;
		if (s->off + ext_len > s->len)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		s->ext_total += ext_len;
		s->next = s->copy.ext.nexthdr;
		s->off += ext_len;
	}
	if (s->next == IPPROTO_FRAGMENT_)
		return SLUICE_XDP_CNT_PASS_FRAGMENT;
	if (is_ipv6_ext(s->next))
		return SLUICE_XDP_CNT_PASS_IPV6_EXT_DEPTH;
	if (s->ext_total > s->l4_len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	if (s->next != IPPROTO_UDP_)
		return SLUICE_XDP_CNT_PASS_NOT_UDP;
	s->l4_len -= s->ext_total;
	return parse_udp_copy(s, ctx);
}

/* IPv4 at nh, then UDP: the fast path unless the header has options (or is malformed). */
static __always_inline int parse_ipv4_udp(struct parse_scratch *s, const struct frame *f)
{
	struct ipv4_hdr_ *ip = f->nh;
	if ((void *)(ip + 1) > f->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	if (ip->ver_ihl != IPV4_VER_IHL_NO_OPTIONS) {
		s->off = 0;
		return parse_ipv4_slow(f->ctx, s);
	}
	/* check_ipv4 for IHL 5, whose 20 bytes are in the frame: */
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < IPV4_MIN_HDR_LEN || tot_len > scratch_rem(s))
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	return parse_ipv4_rest(s, f, f->ctx, ip, tot_len - IPV4_MIN_HDR_LEN);
}

/* IPv6 at nh, its extension headers if any, then its UDP header. */
static __always_inline int parse_ipv6_udp(struct parse_scratch *s, const struct frame *f)
{
	struct ipv6_hdr_ *ip6 = f->nh;
	if ((void *)(ip6 + 1) > f->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	/* The destination first (unused if the header turns out malformed): in this order
	 * fewer values are live at once, and fewer pushed to the stack. */
	set_dst_v6(s, ip6);
	s->ipv6 = 1;
	__u32 payload_len = 0;
	int r = check_ipv6(scratch_rem(s), ip6, &payload_len);
	if (r != PARSE_OK)
		return r;
	__u8 next = ip6->nexthdr;
	if (next == IPPROTO_UDP_)
		return parse_udp_at(s, f, IPV6_HDR_LEN, payload_len);
	if (next == IPPROTO_FRAGMENT_)
		return SLUICE_XDP_CNT_PASS_FRAGMENT;
	if (!is_ipv6_ext(next))
		return SLUICE_XDP_CNT_PASS_NOT_UDP;
	/* Extension headers: UDP at a variable offset. */
	s->off = IPV6_HDR_LEN;
	s->l4_len = payload_len;
	s->next = next;
	return parse_ipv6_ext_udp(f->ctx, s);
}

/* Parses a frame down to its UDP header (into s): PARSE_OK, or the pass reason. */
static __always_inline int parse_frame_udp(struct parse_scratch *s, struct xdp_md *ctx)
{
	struct frame f;
	int r = parse_eth(&f, s, ctx);
	if (r != PARSE_OK)
		return r;
	if (f.ethertype == bpf_htons(ETHERTYPE_IPV4))
		return parse_ipv4_udp(s, &f);
	if (f.ethertype == bpf_htons(ETHERTYPE_IPV6))
		return parse_ipv6_udp(s, &f);
	if (f.ethertype == bpf_htons(ETHERTYPE_ARP))
		return SLUICE_XDP_CNT_PASS_ARP;
	return SLUICE_XDP_CNT_PASS_ETHERTYPE;
}

#endif /* SLUICE_PARSE_H */
