/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cursor parsers for the XDP programs: each copies one header at the cursor out of the frame,
 * checks its lengths against the end of the frame, and moves the cursor past it. Each returns
 * PARSE_OK to go on, or the counter slot that ends the packet with XDP_PASS (enum
 * sluice_xdp_counter).
 *
 * The cursor is a scalar offset. The Ethernet header and its one VLAN tag, at constant offsets,
 * are read in place; every later header is copied out with bpf_xdp_load_bytes, which does its own
 * bounds check. So the programs never move a packet pointer by a variable amount: the verifier
 * allows that (IPv4 options, IPv6 extension headers) only to a loader holding CAP_PERFMON, and
 * this way CAP_BPF and CAP_NET_ADMIN are enough (gateway/tests/xdp_fixtures.rs proves it).
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

struct cursor {
	struct xdp_md *ctx;
	__u32 off; /* the next header's offset from the start of the frame */
	__u32 len; /* bytes in the frame (the programs do not take multi-buffer frames) */
};

static __always_inline struct cursor cursor_at_start(struct xdp_md *ctx)
{
	struct cursor c = { .ctx = ctx, .off = 0, .len = (__u32)bpf_xdp_get_buff_len(ctx) };
	return c;
}

/* Copies `size` bytes at offset `off` into `dst`; false when the frame ends before. */
static __always_inline int load(const struct cursor *c, __u32 off, void *dst, __u32 size)
{
	return bpf_xdp_load_bytes(c->ctx, off, dst, size) == 0;
}

/* What the parsers learn about a UDP datagram. */
struct udp_info {
	struct sluice_addr dst; /* destination address, IPv4 as ::ffff:a.b.c.d */
	__u32 l4_len;           /* bytes of IP payload after the IP (and extension) headers */
	__u32 payload_off;      /* offset of the first byte of the UDP payload */
	__u16 dport;            /* host byte order */
	__u16 payload_len;      /* UDP length minus the UDP header */
	__u8 proto;             /* the upper-layer protocol */
	__u8 v4_mapped_on_v6;   /* an IPv6 packet to ::ffff:a.b.c.d, which is never ours */
};

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
 * Ethernet at the start of the frame and at most one 802.1Q tag, read in place (constant
 * offsets only); *ethertype gets the EtherType after them (network order).
 */
static __always_inline int parse_eth(struct cursor *c, __be16 *ethertype)
{
	void *data = (void *)(long)c->ctx->data;
	void *end = (void *)(long)c->ctx->data_end;
	struct eth_hdr_ *eth = data;
	if ((void *)(eth + 1) > end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	c->off = ETH_HDR_LEN;
	__be16 proto = eth->proto;

	if (proto == bpf_htons(ETHERTYPE_QINQ))
		return SLUICE_XDP_CNT_PASS_VLAN_STACKED;
	if (proto == bpf_htons(ETHERTYPE_VLAN)) {
		struct vlan_hdr_ *vlan = (void *)(eth + 1);
		if ((void *)(vlan + 1) > end)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		c->off = ETH_HDR_LEN + VLAN_HDR_LEN;
		proto = vlan->proto;
		if (proto == bpf_htons(ETHERTYPE_VLAN) || proto == bpf_htons(ETHERTYPE_QINQ))
			return SLUICE_XDP_CNT_PASS_VLAN_STACKED;
	}
	*ethertype = proto;
	return PARSE_OK;
}

/*
 * The IPv4 header at the cursor (options included) is whole and its lengths are sane. Copies
 * the fixed part into *ip; the options, which nothing reads, stay in the frame.
 */
static __always_inline int check_ipv4(const struct cursor *c, struct ipv4_hdr_ *ip,
				      __u32 *hdr_len, __u32 *tot_len)
{
	if (!load(c, c->off, ip, sizeof(*ip)))
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*hdr_len = (ip->ver_ihl & 0x0f) * 4;
	if ((ip->ver_ihl >> 4) != 4 || *hdr_len < IPV4_MIN_HDR_LEN)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	/* The options, if any, must be in the frame too; then the whole datagram. */
	if (c->off + *hdr_len > c->len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*tot_len = bpf_ntohs(ip->tot_len);
	if (*tot_len < *hdr_len || c->off + *tot_len > c->len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	return PARSE_OK;
}

/* The 16-byte form of an IPv4 address: ::ffff:a.b.c.d. */
static __always_inline void v4_mapped(struct sluice_addr *dst, __be32 v4)
{
	__builtin_memset(dst->addr, 0, 10);
	dst->addr[10] = 0xff;
	dst->addr[11] = 0xff;
	__builtin_memcpy(&dst->addr[12], &v4, 4);
}

/* IPv4 with options; fragments (MF set or offset nonzero) are left to the kernel to reassemble. */
static __always_inline int parse_ipv4(struct cursor *c, struct udp_info *info)
{
	struct ipv4_hdr_ ip;
	__u32 hdr_len = 0, tot_len = 0;
	int r = check_ipv4(c, &ip, &hdr_len, &tot_len);
	if (r != PARSE_OK)
		return r;
	if (ip.frag_off & bpf_htons(IPV4_FRAG_MF | IPV4_FRAG_OFFSET))
		return SLUICE_XDP_CNT_PASS_FRAGMENT;

	v4_mapped(&info->dst, ip.daddr);
	info->proto = ip.protocol;
	info->l4_len = tot_len - hdr_len;
	c->off += hdr_len;
	return PARSE_OK;
}

/*
 * The IPv6 base header at the cursor is whole, version 6, its payload within the frame;
 * copied into *ip6.
 */
static __always_inline int check_ipv6(const struct cursor *c, struct ipv6_hdr_ *ip6,
				      __u32 *payload_len)
{
	if (!load(c, c->off, ip6, sizeof(*ip6)))
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	if ((bpf_ntohl(ip6->ver_tc_flow) >> 28) != 6)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*payload_len = bpf_ntohs(ip6->payload_len);
	if (c->off + IPV6_HDR_LEN + *payload_len > c->len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	return PARSE_OK;
}

/* ::ffff:a.b.c.d as an IPv6 destination: never a real address on the wire, never ours. */
static __always_inline int is_v4_mapped(const __u8 *addr)
{
	__u64 hi;
	__u32 mid;
	__builtin_memcpy(&hi, addr, 8);
	__builtin_memcpy(&mid, &addr[8], 4);
	return hi == 0 && mid == bpf_htonl(0x0000ffff);
}

/*
 * IPv6, walking hop-by-hop, routing and destination options headers (at most IPV6_EXT_MAX_WALK
 * of them); a fragment header means a fragment, which the kernel reassembles.
 */
static __always_inline int parse_ipv6(struct cursor *c, struct udp_info *info)
{
	struct ipv6_hdr_ ip6;
	__u32 payload_len = 0;
	int r = check_ipv6(c, &ip6, &payload_len);
	if (r != PARSE_OK)
		return r;
	c->off += IPV6_HDR_LEN;
	__builtin_memcpy(info->dst.addr, ip6.daddr, 16);
	/* local_addrs keys IPv4 as ::ffff:a.b.c.d: such an IPv6 destination must not match. */
	info->v4_mapped_on_v6 = is_v4_mapped(ip6.daddr);

	__u8 next = ip6.nexthdr;
	__u32 ext_total = 0;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX_WALK; i++) {
		if (next == IPPROTO_FRAGMENT_)
			return SLUICE_XDP_CNT_PASS_FRAGMENT;
		if (next != IPPROTO_HOPOPTS_ && next != IPPROTO_ROUTING_ && next != IPPROTO_DSTOPTS_)
			break;
		struct ipv6_ext_ ext;
		if (!load(c, c->off, &ext, sizeof(ext)))
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		__u32 ext_len = ((__u32)ext.hdrlen + 1) * IPV6_EXT_MIN_LEN;
		if (c->off + ext_len > c->len)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		ext_total += ext_len;
		next = ext.nexthdr;
		c->off += ext_len;
	}
	if (next == IPPROTO_FRAGMENT_)
		return SLUICE_XDP_CNT_PASS_FRAGMENT;
	if (next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_)
		return SLUICE_XDP_CNT_PASS_IPV6_EXT_DEPTH;
	if (ext_total > payload_len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	info->proto = next;
	info->l4_len = payload_len - ext_total;
	return PARSE_OK;
}

/* The UDP header; its length must cover the header and fit in the IP payload. */
static __always_inline int parse_udp(struct cursor *c, struct udp_info *info)
{
	struct udp_hdr_ udp;
	if (!load(c, c->off, &udp, sizeof(udp)))
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	__u32 udp_len = bpf_ntohs(udp.len);
	if (udp_len < UDP_HDR_LEN || udp_len > info->l4_len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	c->off += UDP_HDR_LEN;
	info->dport = bpf_ntohs(udp.dest);
	info->payload_len = udp_len - UDP_HDR_LEN;
	info->payload_off = c->off;
	return PARSE_OK;
}

#endif /* SLUICE_PARSE_H */
