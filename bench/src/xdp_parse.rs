//! `sluice-bench xdp-parse`: what the outer-NIC XDP program costs per frame, as loaded by root
//! and as loaded by the systemd unit (only CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW, CAP_IPC_LOCK).
//!
//! The verifier treats the two loaders differently: without CAP_PERFMON it refuses variable
//! packet pointer arithmetic and puts a Spectre v4 barrier after stack writes, so the same
//! object can run at different speeds (see `ebpf/parse.h`). Each frame runs `--repeat` times
//! in a row in the kernel with `BPF_PROG_TEST_RUN` (the measurement `bpftool prog run ...
//! repeat N` makes), `--runs` times; the kernel's average per run is one sample. The unit's
//! loader is this binary again, started through `setpriv` with only the four capabilities.
//!
//! Nothing asserts on speed. A run fails if a frame does not get its expected action or does
//! not move its expected counter once per run, or if the child holds other capabilities.

use crate::harness;
use crate::report::{Machine, Record, Report};
use serde::{Deserialize, Serialize};
use sluice::xdp::{XdpCounter, XdpProgram, XDP_DROP, XDP_PASS};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

const PORT: u16 = 51820;
const LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd18, 0, 0, 0, 0, 0, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd18, 0, 0, 7, 0, 0, 0, 2);

/// The systemd unit's capabilities (ansible/roles/sluice), as a `setpriv --bounding-set`.
const UNIT_CAPS: &str = "-all,+net_admin,+bpf,+net_raw,+ipc_lock";
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs of each frame in a row in the kernel per sample [default: 5000000, or 200000 with
    /// --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    repeat: Option<u32>,
    /// Samples per frame and loader; median, min and max are reported [default: 5, or 1 with
    /// --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    samples: Option<u32>,
    /// Core to pin to (the kernel runs the program on the calling CPU) [default: the last]
    #[arg(long)]
    core: Option<usize>,
    /// Measure only as root (skip the loader with the unit's four capabilities)
    #[arg(long)]
    root_only: bool,
    /// Few runs, for CI smoke tests (explicit flags still win)
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file (schema: see `report.rs`)
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Internal: be the unit-capabilities child and print its samples as JSON
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Debug, Serialize)]
struct Config {
    repeat: u32,
    samples: u32,
    quick: bool,
}

/// One frame's samples from one loader (what the child hands back).
#[derive(Debug, Serialize, Deserialize)]
struct Samples {
    frame: String,
    ns: Vec<f64>,
}

pub fn run(args: &Args) -> Result<(), String> {
    let cfg = Config {
        repeat: args
            .repeat
            .unwrap_or(if args.quick { 200_000 } else { 5_000_000 }),
        samples: args.samples.unwrap_or(if args.quick { 1 } else { 5 }),
        quick: args.quick,
    };
    // The machine first: pinning narrows what it sees of the cores.
    let mut machine = Machine::collect();
    let pinned = harness::pin(args.core);
    if args.child {
        let caps = effective_caps()?;
        if caps & (1 << CAP_PERFMON) != 0 || caps & (1 << CAP_SYS_ADMIN) != 0 {
            return Err(format!(
                "the child holds more than the unit's capabilities: CapEff {caps:016x}"
            ));
        }
        let out = measure(&cfg)?;
        println!(
            "{}",
            serde_json::to_string(&out).map_err(|e| e.to_string())?
        );
        return Ok(());
    }

    machine.pinned_core = match pinned {
        Ok(core) => Some(core),
        Err(e) if args.core.is_some() => return Err(e),
        Err(e) => {
            eprintln!("warning: {e}; running unpinned");
            None
        }
    };
    let params = serde_json::to_value(&cfg).map_err(|e| e.to_string())?;
    let mut report = Report::new("xdp-parse", machine, params);
    println!("{}", report.header());

    let root = measure(&cfg)?;
    let unit = if args.root_only {
        None
    } else {
        Some(unit_caps_child(args, &cfg)?)
    };
    for s in &root {
        report.results.push(Record::from_samples(
            &format!("{}, root", s.frame),
            "ns/frame",
            &s.ns,
        ));
        if let Some(unit) = &unit {
            let u = unit
                .iter()
                .find(|u| u.frame == s.frame)
                .ok_or_else(|| format!("the child did not measure {:?}", s.frame))?;
            report.results.push(Record::from_samples(
                &format!("{}, unit caps", s.frame),
                "ns/frame",
                &u.ns,
            ));
        }
    }
    report.notes.push(format!(
        "kernel average per run of BPF_PROG_TEST_RUN with repeat {} (as `bpftool prog run`); \
         \"unit caps\": loaded by a process holding only CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW \
         and CAP_IPC_LOCK",
        cfg.repeat
    ));
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// This binary again, through `setpriv` with only the unit's capabilities.
fn unit_caps_child(args: &Args, cfg: &Config) -> Result<Vec<Samples>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-all", "--bounding-set", UNIT_CAPS, "--"])
        .arg(exe)
        .args(["xdp-parse", "--child"])
        .args(["--repeat", &cfg.repeat.to_string()])
        .args(["--samples", &cfg.samples.to_string()]);
    if let Some(core) = args.core {
        cmd.args(["--core", &core.to_string()]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running setpriv (util-linux): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the child with only the unit's capabilities failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("the child's samples ({e}): {stdout}"))
}

/// CapEff of this process.
fn effective_caps() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or("no CapEff in /proc/self/status")?;
    u64::from_str_radix(hex.trim(), 16).map_err(|e| e.to_string())
}

/// Loads the program (as this process may), and times every frame.
fn measure(cfg: &Config) -> Result<Vec<Samples>, String> {
    let mut prog = XdpProgram::load().map_err(|e| format!("loading the XDP program: {e}"))?;
    prog.set_ports(&[PORT]).map_err(|e| e.to_string())?;
    prog.set_local_addrs(&[IpAddr::V4(LOCAL4), IpAddr::V6(LOCAL6)])
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for f in frames() {
        // Warm-up, then the samples; each run must move the expected counter once.
        let before = prog.counters().map_err(|e| e.to_string())?;
        let warmup = (cfg.repeat / 10).max(1);
        let mut runs = u64::from(warmup);
        check(f.name, f.action, prog.time_test_run(&f.frame, warmup))?;
        let mut ns = Vec::new();
        for _ in 0..cfg.samples {
            ns.push(check(
                f.name,
                f.action,
                prog.time_test_run(&f.frame, cfg.repeat),
            )?);
            runs += u64::from(cfg.repeat);
        }
        let moved = prog
            .counters()
            .map_err(|e| e.to_string())?
            .delta(&before)
            .get(f.counter);
        if moved != runs {
            return Err(format!(
                "{}: counter {:?} moved {moved} times in {runs} runs",
                f.name, f.counter
            ));
        }
        out.push(Samples {
            frame: f.name.to_string(),
            ns,
        });
    }
    Ok(out)
}

fn check(
    name: &str,
    want: u32,
    got: Result<(u32, u32), sluice::xdp::XdpError>,
) -> Result<f64, String> {
    let (action, ns) = got.map_err(|e| format!("{name}: {e}"))?;
    if action != want {
        return Err(format!("{name}: action {action}, expected {want}"));
    }
    Ok(f64::from(ns))
}

struct Frame {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    counter: XdpCounter,
}

/// WireGuard data frames (160-byte messages) to the gateway: the common shapes, which take the
/// parser's fast path, the shapes of its slow path, and two frames that are not for sluice.
/// No AF_XDP socket is registered, so frames for sluice pass with `pass_no_xsk` after every
/// check a redirected one gets.
fn frames() -> Vec<Frame> {
    let mut data = vec![0u8; 160];
    data[0] = 4; // transport data, reserved bytes zero
    let udp4 = udp(PORT, &data);
    let v4 = ipv4(LOCAL4, 17, &[], &udp4);
    let v6 = ipv6(LOCAL6, None, &udp4);
    let options = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1]; // record route, NOP
    let frame = |name, frame, action, counter| Frame {
        name,
        frame,
        action,
        counter,
    };
    vec![
        frame(
            "v4 data",
            eth(None, 0x0800, &v4),
            XDP_PASS,
            XdpCounter::PassNoXsk,
        ),
        frame(
            "v6 data",
            eth(None, 0x86dd, &v6),
            XDP_PASS,
            XdpCounter::PassNoXsk,
        ),
        frame(
            "v4 data, VLAN",
            eth(Some(100), 0x0800, &v4),
            XDP_PASS,
            XdpCounter::PassNoXsk,
        ),
        frame(
            "v4 data, IP options",
            eth(None, 0x0800, &ipv4(LOCAL4, 17, &options, &udp4)),
            XDP_PASS,
            XdpCounter::PassNoXsk,
        ),
        frame(
            "v6 data, hop-by-hop",
            eth(None, 0x86dd, &ipv6(LOCAL6, Some(0), &udp4)),
            XDP_PASS,
            XdpCounter::PassNoXsk,
        ),
        frame(
            "v4 data, reserved byte set",
            eth(
                None,
                0x0800,
                &ipv4(
                    LOCAL4,
                    17,
                    &[],
                    &udp(PORT, &{
                        let mut d = data.clone();
                        d[1] = 1;
                        d
                    }),
                ),
            ),
            XDP_DROP,
            XdpCounter::DropWgReserved,
        ),
        frame(
            "v4 UDP to another port",
            eth(None, 0x0800, &ipv4(LOCAL4, 17, &[], &udp(53, &data))),
            XDP_PASS,
            XdpCounter::PassOtherPort,
        ),
    ]
}

fn eth(vlan: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 (checksum left zero: XDP does not check it) with `options` (a multiple of 4 bytes).
fn ipv4(dst: Ipv4Addr, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let hdr_len = 20 + options.len();
    let total = (hdr_len + payload.len()) as u16;
    let mut h = vec![0x40 | (hdr_len / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&PEER4.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

/// IPv6 to UDP, optionally through one 8-byte extension header of type `ext`.
fn ipv6(dst: Ipv6Addr, ext: Option<u8>, udp: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    if ext.is_some() {
        chain = vec![17, 0, 1, 4, 0, 0, 0, 0]; // next: UDP, PadN
    }
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((chain.len() + udp.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[ext.unwrap_or(17), 64]);
    h.extend_from_slice(&PEER6.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&chain);
    h.extend_from_slice(udp);
    h
}

/// UDP from port 40000 (checksum left zero: XDP does not check it).
fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}
