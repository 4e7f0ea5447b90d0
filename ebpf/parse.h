/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cursor parsers for the XDP program: each reads one header at the cursor, bounds-checks every
 * byte it touches against the end of the frame (the verifier insists, and so do we), and moves
 * the cursor past it. Each returns PARSE_OK to go on, or the counter slot that ends the packet
 * with XDP_PASS (enum sluice_xdp_counter).
 *
 * Malformed headers (a frame too short for a header, IHL < 5, a length field pointing past the
 * frame or below the header, a UDP length under 8 or beyond the IP payload) are passed and
 * counted as PASS_MALFORMED: the kernel's own validation drops them and counts them in its
 * standard statistics, and XDP never steers a packet whose lengths it cannot trust.
 */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "sluice_xdp_shared.h"

#define PARSE_OK (-1)

struct cursor {
	void *pos;
	void *end;
};

/* What the parsers learn about a UDP datagram. */
struct udp_info {
	struct sluice_addr dst; /* destination address, IPv4 as ::ffff:a.b.c.d */
	__u32 l4_len;           /* bytes of IP payload after the IP (and extension) headers */
	__u16 dport;            /* host byte order */
	__u16 payload_len;      /* UDP length minus the UDP header */
	__u8 proto;             /* the upper-layer protocol */
	__u8 v4_mapped_on_v6;   /* an IPv6 packet to ::ffff:a.b.c.d, which is never ours */
	void *payload;          /* first byte of the UDP payload */
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

/* Ethernet and at most one 802.1Q tag; *ethertype gets the EtherType after them (network order). */
static __always_inline int parse_eth(struct cursor *c, __be16 *ethertype)
{
	struct eth_hdr_ *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	c->pos = eth + 1;
	__be16 proto = eth->proto;

	if (proto == bpf_htons(ETHERTYPE_QINQ))
		return SLUICE_XDP_CNT_PASS_VLAN_STACKED;
	if (proto == bpf_htons(ETHERTYPE_VLAN)) {
		struct vlan_hdr_ *vlan = c->pos;
		if ((void *)(vlan + 1) > c->end)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		c->pos = vlan + 1;
		proto = vlan->proto;
		if (proto == bpf_htons(ETHERTYPE_VLAN) || proto == bpf_htons(ETHERTYPE_QINQ))
			return SLUICE_XDP_CNT_PASS_VLAN_STACKED;
	}
	*ethertype = proto;
	return PARSE_OK;
}

/* The IPv4 header at the cursor (options included) is whole and its lengths are sane. */
static __always_inline int check_ipv4(struct cursor *c, __u32 *hdr_len, __u32 *tot_len)
{
	struct ipv4_hdr_ *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*hdr_len = (ip->ver_ihl & 0x0f) * 4;
	if ((ip->ver_ihl >> 4) != 4 || *hdr_len < IPV4_MIN_HDR_LEN)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	/* The options, if any, must be in the frame too. */
	if (c->pos + *hdr_len > c->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*tot_len = bpf_ntohs(ip->tot_len);
	if (*tot_len < *hdr_len || c->pos + *tot_len > c->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	return PARSE_OK;
}

/* The 16-byte form of an IPv4 address: ::ffff:a.b.c.d. */
static __always_inline void v4_mapped(struct sluice_addr *dst, const __be32 *v4)
{
	__builtin_memset(dst->addr, 0, 10);
	dst->addr[10] = 0xff;
	dst->addr[11] = 0xff;
	__builtin_memcpy(&dst->addr[12], v4, 4);
}

/* IPv4 with options; fragments (MF set or offset nonzero) are left to the kernel to reassemble. */
static __always_inline int parse_ipv4(struct cursor *c, struct udp_info *info)
{
	__u32 hdr_len = 0, tot_len = 0;
	int r = check_ipv4(c, &hdr_len, &tot_len);
	if (r != PARSE_OK)
		return r;
	struct ipv4_hdr_ *ip = c->pos;
	if ((void *)(ip + 1) > c->end) /* for the verifier: check_ipv4 is inlined but not trusted */
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	if (ip->frag_off & bpf_htons(IPV4_FRAG_MF | IPV4_FRAG_OFFSET))
		return SLUICE_XDP_CNT_PASS_FRAGMENT;

	v4_mapped(&info->dst, &ip->daddr);
	info->proto = ip->protocol;
	info->l4_len = tot_len - hdr_len;
	c->pos += hdr_len;
	return PARSE_OK;
}

/* The IPv6 base header at the cursor is whole, version 6, its payload within the frame. */
static __always_inline int check_ipv6(struct cursor *c, __u32 *payload_len)
{
	struct ipv6_hdr_ *ip6 = c->pos;
	if ((void *)(ip6 + 1) > c->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	if ((bpf_ntohl(ip6->ver_tc_flow) >> 28) != 6)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	*payload_len = bpf_ntohs(ip6->payload_len);
	if ((void *)(ip6 + 1) + *payload_len > c->end)
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
	__u32 payload_len = 0;
	int r = check_ipv6(c, &payload_len);
	if (r != PARSE_OK)
		return r;
	struct ipv6_hdr_ *ip6 = c->pos;
	if ((void *)(ip6 + 1) > c->end) /* for the verifier */
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	c->pos = ip6 + 1;
	__builtin_memcpy(info->dst.addr, ip6->daddr, 16);
	/* local_addrs keys IPv4 as ::ffff:a.b.c.d: such an IPv6 destination must not match. */
	info->v4_mapped_on_v6 = is_v4_mapped(ip6->daddr);

	__u8 next = ip6->nexthdr;
	__u32 ext_total = 0;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX_WALK; i++) {
		if (next == IPPROTO_FRAGMENT_)
			return SLUICE_XDP_CNT_PASS_FRAGMENT;
		if (next != IPPROTO_HOPOPTS_ && next != IPPROTO_ROUTING_ && next != IPPROTO_DSTOPTS_)
			break;
		struct ipv6_ext_ *ext = c->pos;
		if ((void *)(ext + 1) > c->end)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		__u32 ext_len = ((__u32)ext->hdrlen + 1) * IPV6_EXT_MIN_LEN;
		if (c->pos + ext_len > c->end)
			return SLUICE_XDP_CNT_PASS_MALFORMED;
		ext_total += ext_len;
		next = ext->nexthdr;
		c->pos += ext_len;
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
	struct udp_hdr_ *udp = c->pos;
	if ((void *)(udp + 1) > c->end)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	__u32 udp_len = bpf_ntohs(udp->len);
	if (udp_len < UDP_HDR_LEN || udp_len > info->l4_len)
		return SLUICE_XDP_CNT_PASS_MALFORMED;
	info->dport = bpf_ntohs(udp->dest);
	info->payload_len = udp_len - UDP_HDR_LEN;
	info->payload = udp + 1;
	c->pos = udp + 1;
	return PARSE_OK;
}

#endif /* SLUICE_PARSE_H */
