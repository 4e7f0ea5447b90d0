/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sluice's XDP program for the outer NIC: steer WireGuard for this gateway into the AF_XDP
 * socket of the receive queue it arrived on, drop obviously invalid WireGuard early, and pass
 * everything else to the kernel untouched. Every packet moves exactly one counter slot.
 *
 * sluice_xdp_inner is appliance mode's program for the inner NIC (appliance.h).
 *
 * "For sluice" means: UDP (not a fragment) whose destination port is in udp_ports and whose
 * destination address is in local_addrs. Only such packets are ever dropped or redirected.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "sluice_xdp_shared.h"
#include "maps.h"
#include "parse.h"
#include "appliance.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline void count_in(void *map, __u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(map, &slot);
	if (n)
		*n += 1; /* per-CPU slot: no other writer */
}

static __always_inline void count(__u32 slot)
{
	count_in(&counters, slot);
}

/*
 * The cheap WireGuard checks (whitepaper section 5.4): the type, the three reserved bytes, and
 * the exact or minimum length per type. Returns the drop reason, or PARSE_OK.
 */
static __always_inline int check_wireguard(const struct cursor *c, const struct udp_info *info)
{
	__u8 hdr[WG_HEADER_LEN];
	if (info->payload_len < WG_HEADER_LEN || !load(c, info->payload_off, hdr, sizeof(hdr)))
		return SLUICE_XDP_CNT_DROP_WG_TRUNCATED;
	if (hdr[0] < WG_TYPE_INITIATION || hdr[0] > WG_TYPE_TRANSPORT)
		return SLUICE_XDP_CNT_DROP_WG_UNKNOWN_TYPE;
	if (hdr[1] | hdr[2] | hdr[3])
		return SLUICE_XDP_CNT_DROP_WG_RESERVED;
	switch (hdr[0]) {
	case WG_TYPE_INITIATION:
		return info->payload_len == WG_INITIATION_LEN ? PARSE_OK
							    : SLUICE_XDP_CNT_DROP_WG_HANDSHAKE_LEN;
	case WG_TYPE_RESPONSE:
		return info->payload_len == WG_RESPONSE_LEN ? PARSE_OK
							  : SLUICE_XDP_CNT_DROP_WG_HANDSHAKE_LEN;
	case WG_TYPE_COOKIE_REPLY:
		return info->payload_len == WG_COOKIE_REPLY_LEN ? PARSE_OK
							      : SLUICE_XDP_CNT_DROP_WG_HANDSHAKE_LEN;
	default:
		return info->payload_len >= WG_TRANSPORT_MIN_LEN ? PARSE_OK
							       : SLUICE_XDP_CNT_DROP_WG_DATA_SHORT;
	}
}

/* Parse down to UDP and decide whether it is for sluice: PARSE_OK, or the pass reason. */
static __always_inline int classify(struct cursor *c, struct udp_info *info)
{
	__be16 ethertype = 0;
	int r = parse_eth(c, &ethertype);
	if (r != PARSE_OK)
		return r;

	if (ethertype == bpf_htons(ETHERTYPE_IPV4))
		r = parse_ipv4(c, info);
	else if (ethertype == bpf_htons(ETHERTYPE_IPV6))
		r = parse_ipv6(c, info);
	else if (ethertype == bpf_htons(ETHERTYPE_ARP))
		return SLUICE_XDP_CNT_PASS_ARP;
	else
		return SLUICE_XDP_CNT_PASS_ETHERTYPE;
	if (r != PARSE_OK)
		return r;
	if (info->proto != IPPROTO_UDP_)
		return SLUICE_XDP_CNT_PASS_NOT_UDP;

	r = parse_udp(c, info);
	if (r != PARSE_OK)
		return r;
	if (!bpf_map_lookup_elem(&udp_ports, &info->dport))
		return SLUICE_XDP_CNT_PASS_OTHER_PORT;
	if (info->v4_mapped_on_v6 || !bpf_map_lookup_elem(&local_addrs, &info->dst))
		return SLUICE_XDP_CNT_PASS_OTHER_ADDR;
	return PARSE_OK;
}

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	struct cursor c = cursor_at_start(ctx);
	struct udp_info info = {};

	int r = classify(&c, &info);
	if (r != PARSE_OK) {
		count(r);
		return XDP_PASS;
	}
	r = check_wireguard(&c, &info);
	if (r != PARSE_OK) {
		count(r);
		return XDP_DROP;
	}

	/* An empty slot makes bpf_redirect_map return its flags' action: XDP_PASS, so the
	 * kernel's UDP socket (the portable datapath) still serves this queue. */
	__u32 queue = ctx->rx_queue_index;
	long action = bpf_redirect_map(&xsks, queue, XDP_PASS);
	count(action == XDP_REDIRECT ? SLUICE_XDP_CNT_REDIRECT : SLUICE_XDP_CNT_PASS_NO_XSK);
	return action;
}

SEC("xdp")
int sluice_xdp_inner(struct xdp_md *ctx)
{
	struct cursor c = cursor_at_start(ctx);
	int r = classify_inner(&c);
	if (r != PARSE_OK) {
		count_in(&inner_counters, r);
		return XDP_PASS;
	}
	__u32 queue = ctx->rx_queue_index;
	long action = bpf_redirect_map(&inner_xsks, queue, XDP_PASS);
	count_in(&inner_counters, action == XDP_REDIRECT ? SLUICE_XDP_INNER_CNT_REDIRECT
							 : SLUICE_XDP_INNER_CNT_PASS_NO_XSK);
	return action;
}
