/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the XDP program and its Rust loader (gateway/src/xdp/) share: counter indices and the
 * layouts of map keys and values. This file is the one source of truth: gateway/build.rs reads
 * it and generates the Rust constants, so keep each item on one line in the form it parses:
 *
 *   #define SLUICE_XDP_<NAME> <decimal>
 *   SLUICE_XDP_CNT_<NAME> = <decimal>, / * one-line description * /
 */
#ifndef SLUICE_XDP_SHARED_H
#define SLUICE_XDP_SHARED_H

/* Map sizes. */
#define SLUICE_XDP_MAX_QUEUES 256  /* XSKMAP slots: one per NIC receive queue */
#define SLUICE_XDP_MAX_PORTS 64    /* UDP ports sluice listens on */
#define SLUICE_XDP_PORT_WORDS 1024 /* udp_ports: one bit per UDP port, in 64-bit words */
#define SLUICE_XDP_MAX_ADDRS 4096  /* local and VIP addresses, both families */
#define SLUICE_XDP_MAX_TUNNEL_PREFIXES 1048576 /* appliance mode: user tunnel prefixes */

/* Key of the local_addrs map: an IPv6 address, or an IPv4 one as ::ffff:a.b.c.d. */
#define SLUICE_XDP_ADDR_LEN 16 /* bytes of a local_addrs key */
struct sluice_addr {
	__u8 addr[SLUICE_XDP_ADDR_LEN];
};

/* Key of the tunnel_prefixes LPM trie: prefix length in bits over the 16-byte form above (an
 * IPv4 /n is ::ffff:a.b.c.d/(96+n)). The layout of `struct bpf_lpm_trie_key`. */
struct sluice_prefix {
	__u32 prefixlen;
	__u8 addr[SLUICE_XDP_ADDR_LEN];
};

/*
 * One slot of the per-CPU counters map per verdict and reason. The prefix of each name is the
 * XDP verdict (redirect, pass, drop); every packet the program sees moves exactly one slot.
 */
enum sluice_xdp_counter {
	SLUICE_XDP_CNT_REDIRECT = 0, /* WireGuard for sluice, redirected to the AF_XDP socket of its queue */
	SLUICE_XDP_CNT_PASS_NO_XSK = 1, /* WireGuard for sluice, no AF_XDP socket on its queue: to the kernel (socket datapath) */
	SLUICE_XDP_CNT_DROP_WG_TRUNCATED = 2, /* for sluice, UDP payload shorter than the 4-byte WireGuard header */
	SLUICE_XDP_CNT_DROP_WG_UNKNOWN_TYPE = 3, /* for sluice, message type not 1..4 */
	SLUICE_XDP_CNT_DROP_WG_RESERVED = 4, /* for sluice, nonzero reserved header bytes */
	SLUICE_XDP_CNT_DROP_WG_HANDSHAKE_LEN = 5, /* for sluice, initiation/response/cookie reply not 148/92/64 bytes */
	SLUICE_XDP_CNT_DROP_WG_DATA_SHORT = 6, /* for sluice, data message under 32 bytes (header + tag) */
	SLUICE_XDP_CNT_PASS_MALFORMED = 7, /* truncated or inconsistent Ethernet/VLAN/IP/UDP header: the kernel validates it */
	SLUICE_XDP_CNT_PASS_ARP = 8, /* ARP */
	SLUICE_XDP_CNT_PASS_ETHERTYPE = 9, /* another EtherType (neither IPv4, IPv6 nor ARP) */
	SLUICE_XDP_CNT_PASS_VLAN_STACKED = 10, /* two or more VLAN tags (QinQ) */
	SLUICE_XDP_CNT_PASS_FRAGMENT = 11, /* IPv4 or IPv6 fragment */
	SLUICE_XDP_CNT_PASS_IPV6_EXT_DEPTH = 12, /* more IPv6 extension headers than the program walks */
	SLUICE_XDP_CNT_PASS_NOT_UDP = 13, /* IP but not UDP (TCP, ICMP, ICMPv6 and ND, ...) */
	SLUICE_XDP_CNT_PASS_OTHER_PORT = 14, /* UDP to a port sluice does not serve */
	SLUICE_XDP_CNT_PASS_OTHER_ADDR = 15, /* UDP to a sluice port but not to a local or VIP address */
	SLUICE_XDP_CNT_MAX = 16, /* number of slots, not a counter */
};

/*
 * Appliance mode: the inner-NIC program's counters, one slot per verdict and reason, every
 * packet in exactly one.
 */
enum sluice_xdp_inner_counter {
	SLUICE_XDP_INNER_CNT_REDIRECT = 0, /* to a user tunnel address, redirected to the AF_XDP socket of its queue */
	SLUICE_XDP_INNER_CNT_PASS_NO_XSK = 1, /* to a user tunnel address, no AF_XDP socket on its queue: to the kernel */
	SLUICE_XDP_INNER_CNT_PASS_MALFORMED = 2, /* truncated or inconsistent Ethernet/VLAN/IP header: the kernel validates it */
	SLUICE_XDP_INNER_CNT_PASS_NOT_IP = 3, /* ARP or another EtherType */
	SLUICE_XDP_INNER_CNT_PASS_VLAN_STACKED = 4, /* two or more VLAN tags (QinQ) */
	SLUICE_XDP_INNER_CNT_PASS_NOT_TUNNEL = 5, /* IP not to a user tunnel address (the gateway itself, other hosts) */
	SLUICE_XDP_INNER_CNT_MAX = 6, /* number of slots, not a counter */
};

#endif /* SLUICE_XDP_SHARED_H */
