/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sluice-bench compare's sink counter (not part of the gateway): attached to the sink's end
 * of the gateway -> sink link, it checks every inner packet the gateway delivered the way the
 * benchmark's socket sink does (bench/src/compare/packet.rs), counts it per CPU and drops it,
 * so counting costs the sink's kernel almost nothing (no IP or UDP receive, no socket, no
 * copy to user space).
 *
 * Per packet of this run (IPv4/UDP to cfg_sink_addr:cfg_port with the run's magic and
 * number): the IP, UDP and frame lengths agree with the size the payload claims, the source
 * is the claimed user's tunnel address, the first filler bytes are right, and the sequence
 * number is inside the run and seen for the first time (an atomic test-and-set in the
 * `sink_seen` bitmap, one bit per packet of the run, shared by all CPUs).
 *
 * Every cfg_sample_every-th sequence number passes to the socket instead, which checks the
 * whole payload (and the latency probes' arrival times); so does anything that is not this
 * run's payload. Everything else the program decides is dropped. One counter slot per
 * packet (bench_sink_shared.h).
 *
 * The loader (gateway/src/xdp/bench_sink.rs) sets the cfg_* constants and the bitmap's size
 * for each run and loads a fresh copy, so the bitmap starts empty.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "bench_sink_shared.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The run, set by the loader before loading (read-only to the program). */
volatile const __u32 cfg_sink_addr = 0; /* network order */
volatile const __u32 cfg_port = 0; /* UDP port, host order */
volatile const __u32 cfg_run = 0;
volatile const __u32 cfg_users = 0;
volatile const __u32 cfg_first_user_addr = 0; /* user 0's tunnel address, host order */
volatile const __u64 cfg_total = 0; /* sequence numbers 0..total-1 */
volatile const __u64 cfg_sample_every = 1;

struct sink_counters {
	__u64 slot[SLUICE_SINK_CNT_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_counters);
} sink_counters SEC(".maps");

/* Bit seq % 64 of word seq / 64: packet seq arrived. Sized for the run by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_seen SEC(".maps");

#define SINK_MAGIC 0x534c4342 /* "SLCB" */
#define IPV4_LEN 20
#define UDP_LEN 8
#define HEADERS (sizeof(struct ethhdr) + IPV4_LEN + UDP_LEN)

/* The slot of one frame; *bytes gets an accepted packet's inner size. */
static __always_inline __u32 check(struct xdp_md *ctx, __u32 *bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct udphdr *udp = (void *)ip + IPV4_LEN;
	__u8 *pl = (void *)udp + UDP_LEN;

	if ((void *)pl > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return SLUICE_SINK_CNT_PASS_OTHER;
	/* IPv4 without options (the generator sends none), not a fragment. */
	if (*(__u8 *)ip != 0x45 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)) || ip->daddr != cfg_sink_addr ||
	    udp->dest != bpf_htons(cfg_port))
		return SLUICE_SINK_CNT_PASS_OTHER;
	if ((void *)(pl + SLUICE_SINK_PL_HEADER) > data_end ||
	    *(__u32 *)pl != bpf_htonl(SINK_MAGIC) ||
	    *(__u32 *)(pl + SLUICE_SINK_PL_RUN) != bpf_htonl(cfg_run))
		return SLUICE_SINK_CNT_PASS_FOREIGN;

	__u64 seq = bpf_be64_to_cpu(*(__u64 *)(pl + SLUICE_SINK_PL_SEQ));
	if (seq % cfg_sample_every == 0)
		return SLUICE_SINK_CNT_PASS_SAMPLE;

	__u32 total = bpf_ntohs(ip->tot_len);
	__u32 frame = data_end - data;
	if (total < IPV4_LEN + UDP_LEN + SLUICE_SINK_PL_HEADER ||
	    bpf_ntohs(udp->len) != total - IPV4_LEN || frame < sizeof(struct ethhdr) + total ||
	    bpf_ntohs(*(__u16 *)(pl + SLUICE_SINK_PL_SIZE)) != total)
		return SLUICE_SINK_CNT_WRONG_SIZE;

	__u32 user = bpf_ntohl(*(__u32 *)(pl + SLUICE_SINK_PL_USER));
	if (user >= cfg_users || bpf_ntohl(ip->saddr) != cfg_first_user_addr + user)
		return SLUICE_SINK_CNT_WRONG_USER;

	if (total >= IPV4_LEN + UDP_LEN + SLUICE_SINK_PL_HEADER + SLUICE_SINK_FILLER_CHECKED) {
		__u8 *filler = pl + SLUICE_SINK_PL_HEADER;
		if ((void *)(filler + SLUICE_SINK_FILLER_CHECKED) > data_end)
			return SLUICE_SINK_CNT_WRONG_SIZE;
#pragma unroll
		for (int i = 0; i < SLUICE_SINK_FILLER_CHECKED; i++)
			if (filler[i] != (__u8)(seq + i))
				return SLUICE_SINK_CNT_CORRUPT;
	}

	if (seq >= cfg_total)
		return SLUICE_SINK_CNT_OUT_OF_RANGE;
	__u32 word = seq / 64;
	__u64 *seen = bpf_map_lookup_elem(&sink_seen, &word);
	if (!seen)
		return SLUICE_SINK_CNT_OUT_OF_RANGE;
	__u64 bit = 1ULL << (seq % 64);
	if (__sync_fetch_and_or(seen, bit) & bit)
		return SLUICE_SINK_CNT_DUPLICATE;
	*bytes = total;
	return SLUICE_SINK_CNT_ACCEPTED;
}

SEC("xdp")
int sluice_bench_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sink_counters *c = bpf_map_lookup_elem(&sink_counters, &zero);
	if (!c)
		return XDP_PASS; /* cannot happen */
	__u32 bytes = 0;
	__u32 slot = check(ctx, &bytes);
	if (slot >= SLUICE_SINK_CNT_MAX)
		return XDP_PASS; /* cannot happen */
	c->slot[slot]++;
	switch (slot) {
	case SLUICE_SINK_CNT_ACCEPTED:
		c->slot[SLUICE_SINK_CNT_ACCEPTED_BYTES] += bytes;
		return XDP_DROP;
	case SLUICE_SINK_CNT_PASS_SAMPLE:
	case SLUICE_SINK_CNT_PASS_FOREIGN:
	case SLUICE_SINK_CNT_PASS_OTHER:
		return XDP_PASS;
	default:
		return XDP_DROP;
	}
}
