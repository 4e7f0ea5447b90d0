/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The maps of the XDP program. Userspace (gateway/src/xdp/) fills udp_ports and local_addrs,
 * inserts AF_XDP socket fds into xsks, and sums counters over CPUs. Names here are the names
 * the loader looks up. (The parsers' per-CPU scratch map is in parse.h, next to its layout.)
 */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_xdp_shared.h"

/* AF_XDP sockets, indexed by receive queue. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, SLUICE_XDP_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/*
 * UDP destination ports sluice serves (at most SLUICE_XDP_MAX_PORTS): a bitmap, port p being
 * bit p % 64 of word p / 64. An array lookup, which the verifier inlines, is a fraction of a
 * hash lookup's cost on every packet.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLUICE_XDP_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} udp_ports SEC(".maps");

/* The gateway's local and VIP addresses; the value is unused (1). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_XDP_MAX_ADDRS);
	__type(key, struct sluice_addr);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* One slot per verdict and reason (enum sluice_xdp_counter), per CPU: no atomics needed. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_XDP_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Appliance mode (inner NIC): AF_XDP sockets bound to the inner NIC's queues. A socket only
 * receives from the device and queue it is bound to, hence a map of its own. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, SLUICE_XDP_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} inner_xsks SEC(".maps");

/* Appliance mode: the users' tunnel addresses (their AllowedIPs); the value is unused (1). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SLUICE_XDP_MAX_TUNNEL_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sluice_prefix);
	__type(value, __u8);
} tunnel_prefixes SEC(".maps");

/* Appliance mode: enum sluice_xdp_inner_counter, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_XDP_INNER_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} inner_counters SEC(".maps");

#endif /* SLUICE_MAPS_H */
