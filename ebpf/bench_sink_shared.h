/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What bench_sink.c (sluice-bench compare's sink counter) shares with its loader
 * (gateway/src/xdp/bench_sink.rs): the counter slots and the layout of the payload it checks.
 * gateway/build.rs turns every `#define SLUICE_SINK_<NAME> <n>` line into
 * `pub const SINK_<NAME>: u32` in Rust, so keep one define per line with its comment.
 *
 * The payload (bench/src/compare/packet.rs): after the IPv4 (20) and UDP (8) headers,
 *   magic "SLCB" (4) | run (4) | seq (8) | user (4) | size (2) | 0 (2) | filler (seq + i) ...
 * all big endian.
 */
#ifndef SLUICE_BENCH_SINK_SHARED_H
#define SLUICE_BENCH_SINK_SHARED_H

/* Counter slots of the per-CPU `sink_counters` value, one __u64 each. */
#define SLUICE_SINK_CNT_ACCEPTED 0 /* verified and counted in XDP, then dropped */
#define SLUICE_SINK_CNT_ACCEPTED_BYTES 1 /* inner IP bytes of the accepted packets */
#define SLUICE_SINK_CNT_PASS_SAMPLE 2 /* ours, passed to the socket for the full check (every sample_every-th seq) */
#define SLUICE_SINK_CNT_PASS_FOREIGN 3 /* to the sink's port but not this run's payload: passed */
#define SLUICE_SINK_CNT_PASS_OTHER 4 /* not IPv4/UDP to the sink's address and port: passed */
#define SLUICE_SINK_CNT_WRONG_SIZE 5 /* IP, UDP, frame or claimed size disagree: dropped */
#define SLUICE_SINK_CNT_WRONG_USER 6 /* source is not the claimed user's tunnel address: dropped */
#define SLUICE_SINK_CNT_CORRUPT 7 /* the first filler bytes are wrong: dropped */
#define SLUICE_SINK_CNT_DUPLICATE 8 /* sequence number seen before: dropped */
#define SLUICE_SINK_CNT_OUT_OF_RANGE 9 /* sequence number beyond the run: dropped */
#define SLUICE_SINK_CNT_MAX 10 /* number of slots */

/* Payload layout (offsets into the UDP payload). */
#define SLUICE_SINK_PL_RUN 4 /* run, be32 */
#define SLUICE_SINK_PL_SEQ 8 /* seq, be64 */
#define SLUICE_SINK_PL_USER 16 /* user, be32 */
#define SLUICE_SINK_PL_SIZE 20 /* inner size, be16 */
#define SLUICE_SINK_PL_HEADER 24 /* payload header length; the filler follows */
#define SLUICE_SINK_FILLER_CHECKED 4 /* filler bytes XDP checks (the socket checks them all) */

#endif /* SLUICE_BENCH_SINK_SHARED_H */
