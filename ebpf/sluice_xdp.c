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

/*
 * The cheap WireGuard checks (whitepaper section 5.4): the type, the three reserved bytes, and
 * the exact or minimum length per type. Returns the drop reason, or PARSE_OK.
 */
static __always_inline int check_wireguard(const struct parse_scratch *s)
{
	__u16 payload_len = s->payload_len;
	if (payload_len < WG_HEADER_LEN || !s->wg_present)
		return SLUICE_XDP_CNT_DROP_WG_TRUNCATED;
	__u32 hdr = bpf_ntohl(s->wg); /* type in the top byte, then the reserved ones */
	__u32 type = hdr >> 24;
	if (type < WG_TYPE_INITIATION || type > WG_TYPE_TRANSPORT)
		return SLUICE_XDP_CNT_DROP_WG_UNKNOWN_TYPE;
	if (hdr & 0x00ffffff)
		return SLUICE_XDP_CNT_DROP_WG_RESERVED;
	switch (type) {
	case WG_TYPE_INITIATION:
		return payload_len == WG_INITIATION_LEN ? PARSE_OK : SLUICE_XDP_CNT_DROP_WG_HANDSHAKE_LEN;
	case WG_TYPE_RESPONSE:
		return payload_len == WG_RESPONSE_LEN ? PARSE_OK : SLUICE_XDP_CNT_DROP_WG_HANDSHAKE_LEN;
	case WG_TYPE_COOKIE_REPLY:
		return payload_len == WG_COOKIE_REPLY_LEN ? PARSE_OK
							  : SLUICE_XDP_CNT_DROP_WG_HANDSHAKE_LEN;
	default:
		return payload_len >= WG_TRANSPORT_MIN_LEN ? PARSE_OK
							   : SLUICE_XDP_CNT_DROP_WG_DATA_SHORT;
	}
}

/* Parse down to UDP and decide whether it is for sluice: PARSE_OK, or the pass reason. */
static __always_inline int classify(struct parse_scratch *s, struct xdp_md *ctx)
{
	int r = parse_frame_udp(s, ctx);
	if (r != PARSE_OK)
		return r;
	/* udp_ports is a bitmap (maps.h); dport is read again after the call rather than kept
	 * in a register across it, which would push it onto the stack. */
	s->port_word = s->dport / 64;
	const __u64 *ports = bpf_map_lookup_elem(&udp_ports, &s->port_word);
	if (!ports || !(*ports & (1ULL << (s->dport % 64))))
		return SLUICE_XDP_CNT_PASS_OTHER_PORT;
	/* local_addrs keys IPv4 as ::ffff:a.b.c.d: such an IPv6 destination must not match. */
	if ((s->ipv6 && dst_is_v4_mapped(s)) || !bpf_map_lookup_elem(&local_addrs, s->dst.key.addr))
		return SLUICE_XDP_CNT_PASS_OTHER_ADDR;
	return PARSE_OK;
}

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	struct parse_scratch *s = scratch_get();
	if (!s)
		return XDP_PASS; /* cannot happen */

	long action = XDP_PASS;
	int r = classify(s, ctx);
	if (r == PARSE_OK) {
		r = check_wireguard(s);
		if (r == PARSE_OK) {
			/* An empty slot makes bpf_redirect_map return its flags' action: XDP_PASS,
			 * so the kernel's UDP socket (the portable datapath) still serves this
			 * queue. */
			action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
			r = action == XDP_REDIRECT ? SLUICE_XDP_CNT_REDIRECT
						   : SLUICE_XDP_CNT_PASS_NO_XSK;
		} else {
			action = XDP_DROP;
		}
	}
	count_in(&counters, s, r);
	return action;
}

SEC("xdp")
int sluice_xdp_inner(struct xdp_md *ctx)
{
	struct parse_scratch *s = scratch_get();
	if (!s)
		return XDP_PASS; /* cannot happen */

	int r = classify_inner(s, ctx);
	if (r != PARSE_OK) {
		count_in(&inner_counters, s, r);
		return XDP_PASS;
	}
	__u32 queue = ctx->rx_queue_index;
	long action = bpf_redirect_map(&inner_xsks, queue, XDP_PASS);
	count_in(&inner_counters, s,
		 action == XDP_REDIRECT ? SLUICE_XDP_INNER_CNT_REDIRECT
					: SLUICE_XDP_INNER_CNT_PASS_NO_XSK);
	return action;
}
