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
static __always_inline int classify_inner(struct cursor *c)
{
	__be16 ethertype = 0;
	int r = parse_eth(c, &ethertype);
	if (r != PARSE_OK)
		return inner_reason(r);

	struct sluice_prefix key = { .prefixlen = SLUICE_XDP_ADDR_LEN * 8 };
	if (ethertype == bpf_htons(ETHERTYPE_IPV4)) {
		struct ipv4_hdr_ ip;
		__u32 hdr_len = 0, tot_len = 0;
		r = check_ipv4(c, &ip, &hdr_len, &tot_len);
		if (r != PARSE_OK)
			return inner_reason(r);
		v4_mapped((struct sluice_addr *)key.addr, ip.daddr);
	} else if (ethertype == bpf_htons(ETHERTYPE_IPV6)) {
		struct ipv6_hdr_ ip6;
		__u32 payload_len = 0;
		r = check_ipv6(c, &ip6, &payload_len);
		if (r != PARSE_OK)
			return inner_reason(r);
		if (is_v4_mapped(ip6.daddr))
			return SLUICE_XDP_INNER_CNT_PASS_NOT_TUNNEL;
		__builtin_memcpy(key.addr, ip6.daddr, 16);
	} else {
		return SLUICE_XDP_INNER_CNT_PASS_NOT_IP;
	}
	if (!bpf_map_lookup_elem(&tunnel_prefixes, &key))
		return SLUICE_XDP_INNER_CNT_PASS_NOT_TUNNEL;
	return PARSE_OK;
}

#endif /* SLUICE_APPLIANCE_H */
