/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Appliance mode: the inner-NIC program's classification. Traffic from the enterprise side to a
 * user's tunnel address (any protocol, fragments included: sluice encrypts whole IP packets)
 * goes to the AF_XDP socket of its receive queue in inner_xsks; everything else (the gateway's
 * own traffic, ARP, ND, other hosts) passes to the kernel.
 */
#ifndef SLUICE_APPLIANCE_H
#define SLUICE_APPLIANCE_H

#include "maps.h"
#include "parse.h"

/* An outer-program pass reason from the shared parsers, as an inner-program slot. */
static __always_inline int inner_reason(int outer)
{
	return outer == SLUICE_XDP_CNT_PASS_VLAN_STACKED ? SLUICE_XDP_INNER_CNT_PASS_VLAN_STACKED
							   : SLUICE_XDP_INNER_CNT_PASS_MALFORMED;
}

/* PARSE_OK when the packet is for a user tunnel address, else its inner pass reason. */
static __always_inline int classify_inner(struct parse_scratch *s, struct xdp_md *ctx)
{
	struct frame f;
	int r = parse_eth(&f, s, ctx);
	if (r != PARSE_OK)
		return inner_reason(r);
	if (f.ethertype == bpf_htons(ETHERTYPE_IPV4)) {
		struct ipv4_hdr_ *ip = f.nh;
		if ((void *)(ip + 1) > f.end)
			return SLUICE_XDP_INNER_CNT_PASS_MALFORMED;
		__u32 hdr_len = 0, tot_len = 0;
		if (check_ipv4(scratch_rem(s), ip, &hdr_len, &tot_len) != PARSE_OK)
			return SLUICE_XDP_INNER_CNT_PASS_MALFORMED;
		set_dst_v4(s, ip->daddr);
	} else if (f.ethertype == bpf_htons(ETHERTYPE_IPV6)) {
		struct ipv6_hdr_ *ip6 = f.nh;
		if ((void *)(ip6 + 1) > f.end)
			return SLUICE_XDP_INNER_CNT_PASS_MALFORMED;
		__u32 payload_len = 0;
		if (check_ipv6(scratch_rem(s), ip6, &payload_len) != PARSE_OK)
			return SLUICE_XDP_INNER_CNT_PASS_MALFORMED;
		set_dst_v6(s, ip6);
		if (dst_is_v4_mapped(s))
			return SLUICE_XDP_INNER_CNT_PASS_NOT_TUNNEL;
	} else {
		return SLUICE_XDP_INNER_CNT_PASS_NOT_IP;
	}
	s->dst.key.prefixlen = SLUICE_XDP_ADDR_LEN * 8;
	if (!bpf_map_lookup_elem(&tunnel_prefixes, &s->dst.key))
		return SLUICE_XDP_INNER_CNT_PASS_NOT_TUNNEL;
	return PARSE_OK;
}

#endif /* SLUICE_APPLIANCE_H */
