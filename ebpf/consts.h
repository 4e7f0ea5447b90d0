/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Wire constants the XDP program checks. The WireGuard ones mirror gateway/src/proto/messages.rs;
 * gateway/build.rs exports every `#define WG_*` here to Rust and a unit test in
 * gateway/src/xdp/ asserts they equal the protocol core's, so the two cannot drift.
 */
#ifndef SLUICE_CONSTS_H
#define SLUICE_CONSTS_H

/* Ethernet (IEEE 802.3) and VLAN (IEEE 802.1Q / 802.1ad). */
#define ETH_HDR_LEN 14
#define VLAN_HDR_LEN 4
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ETHERTYPE_VLAN 0x8100 /* 802.1Q C-tag */
#define ETHERTYPE_QINQ 0x88A8 /* 802.1ad S-tag */
#define ETHERTYPE_IPV6 0x86DD

/* IPv4 (RFC 791). */
#define IPV4_MIN_HDR_LEN 20
#define IPV4_VER_IHL_NO_OPTIONS 0x45 /* first byte: version 4, IHL 5 (no options) */
#define IPV4_FRAG_MF 0x2000
#define IPV4_FRAG_OFFSET 0x1FFF

/* IPv6 (RFC 8200) and the extension headers the program walks. */
#define IPV6_HDR_LEN 40
#define IPV6_EXT_MIN_LEN 8
#define IPV6_EXT_MAX_WALK 4 /* extension headers walked before giving up (pass) */
#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_DSTOPTS_ 60

/* UDP (RFC 768). */
#define UDP_HDR_LEN 8
#define IPPROTO_UDP_ 17

/* WireGuard (whitepaper section 5.4): a 4-byte header, a type byte then three zero bytes. */
#define WG_HEADER_LEN 4 /* type byte and three reserved zero bytes */
#define WG_TYPE_INITIATION 1 /* handshake initiation */
#define WG_TYPE_RESPONSE 2 /* handshake response */
#define WG_TYPE_COOKIE_REPLY 3 /* cookie reply */
#define WG_TYPE_TRANSPORT 4 /* transport data */
#define WG_INITIATION_LEN 148 /* exact length of an initiation */
#define WG_RESPONSE_LEN 92 /* exact length of a response */
#define WG_COOKIE_REPLY_LEN 64 /* exact length of a cookie reply */
#define WG_TRANSPORT_MIN_LEN 32 /* 16-byte header (type, receiver, counter) + 16-byte tag */

#endif /* SLUICE_CONSTS_H */
