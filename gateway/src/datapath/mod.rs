//! The portable data path: UDP sockets on the outside, a multi-queue TUN device on the inside,
//! pinned worker threads in between, and handshake threads on the side.
//!
//! ```text
//!           UDP :51820 (SO_REUSEPORT, one socket per worker)
//!                 |  recvmmsg / sendmmsg batches
//!   +-------------v-------------+      handshakes (mac1 ok)      +-------------------+
//!   | worker 0 (core 0)         |-----> bounded queue ---------->| handshake thread  |
//!   |  decrypt, cryptokey check |       depth -> under load      |  cookies, Noise   |
//!   |  route, encrypt, timers   |                                +-------------------+
//!   +-------------^-------------+
//!                 |  read / write
//!           TUN queue 0 (IFF_MULTI_QUEUE, one per worker)
//! ```
//!
//! Start-up opens every TUN queue and socket before any thread starts, so a failure leaves
//! nothing half-started. SIGINT/SIGTERM stop the threads, close the queues (which removes the
//! TUN device) and return.

pub mod control;
pub mod control_sock;
pub mod fastpath;
pub mod fault;
pub mod frame;
pub mod ha;
pub mod handshake;
pub mod icmp;
pub mod io;
pub mod neigh;
pub mod netdev;
pub mod observe;
pub mod peers;
pub mod shared;
mod status;
pub mod tun;
pub mod udp;
pub mod worker;
pub mod xsk;
pub mod xsk_inner;

use crate::config::Config;
use crate::log;
use handshake::HandshakeThread;
use icmp::IcmpReplies;
use peers::PeerChange;
use shared::Shared;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tun::{TunError, TunQueue};
use udp::UdpSocket;
use worker::{Worker, WorkerStats};

/// Handshake messages waiting for the handshake threads, at most.
pub const HANDSHAKE_QUEUE: usize = 4096;
/// A worker that has not gone round its loop for this long is reported stuck.
const STUCK_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Rewrite a JSON status snapshot here about once a second.
    pub status_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("binding UDP port {port}: {err}")]
    Socket { port: u16, err: std::io::Error },
    #[error("setting up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("starting thread: {0}")]
    Thread(std::io::Error),
    #[error("binding the metrics endpoint {addr}: {err}")]
    Metrics {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error("binding the wg API socket for {name} (is another WireGuard interface with that name running?): {err}")]
    Uapi { name: String, err: std::io::Error },
    #[error("{0}")]
    Fault(String),
    #[error("ha: {0}")]
    Ha(String),
    #[error("dataplane mode xdp on {ifname}: {err}")]
    FastPath {
        ifname: String,
        err: fastpath::FastPathError,
    },
}

/// Make the calling (control-plane) thread yield to the data path: peer changes cost one DH
/// per added peer, and a stream of `wg set` requests must not take CPU from the workers. On a
/// machine with idle cores this changes nothing; on a saturated one, changes queue instead.
fn yield_to_data_path() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes this
    // thread's nice value (a failure leaves it as it was, which is fine).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, CONTROL_NICE);
    }
}

/// The nice value of control-plane threads (the wg API server).
const CONTROL_NICE: libc::c_int = 10;

/// Start one worker thread over any outer and inner side.
fn spawn_worker<O: io::Outer + 'static, I: io::Inner + 'static>(
    w: Worker<O, I>,
    core: Option<usize>,
) -> Result<std::thread::JoinHandle<()>, RunError> {
    let id = w.id;
    std::thread::Builder::new()
        .name(format!("sluice-w{id}"))
        .spawn(move || {
            if let Some(core) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    log::warn(&format!("worker {id}: could not pin to core {core}"));
                }
            }
            let stats = w.stats.clone();
            fault::run_contained("worker", id, &stats, move || w.run());
        })
        .map_err(RunError::Thread)
}

/// Decide the data path: xdp when configured (or `auto` and it works), else socket. Returns
/// the fast path if any and the reason for the choice, for the start-up log.
fn choose_dataplane(
    cfg: &Config,
    sockets: &[Arc<UdpSocket>],
) -> Result<(Option<fastpath::FastPath>, String), RunError> {
    use crate::config::Mode;
    match (cfg.dataplane.mode, &cfg.dataplane.outer) {
        (Mode::Socket, _) => Ok((None, "dataplane.mode = socket".into())),
        (Mode::Auto, None) => Ok((
            None,
            "auto: no dataplane.outer interface is configured for XDP".into(),
        )),
        (mode, Some(ifname)) => match fastpath::FastPath::start(
            ifname,
            cfg.listen_port,
            sockets,
            cfg.dataplane
                .inner
                .as_deref()
                .map(|i| fastpath::InnerConfig {
                    ifname: i,
                    next_hops: &cfg.dataplane.inner_next_hop,
                }),
        ) {
            Ok(fp) => {
                let why = if mode == Mode::Auto {
                    format!("auto: {ifname} took the XDP program")
                } else {
                    "dataplane.mode = xdp".into()
                };
                Ok((Some(fp), why))
            }
            Err(err) if mode == Mode::Auto => Ok((
                None,
                format!("auto: XDP on {ifname} is not available ({err})"),
            )),
            Err(err) => Err(RunError::FastPath {
                ifname: ifname.clone(),
                err,
            }),
        },
        (Mode::Xdp, None) => Ok((None, "xdp without dataplane.outer".into())),
    }
}

/// Block the signals the main thread waits for, in this thread and every thread it starts.
fn block_signals() -> Result<libc::sigset_t, RunError> {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own; pthread_sigmask
    // only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(RunError::Signals(std::io::Error::from_raw_os_error(rc)));
        }
        Ok(set)
    }
}

/// Wait up to `timeout` for one of the blocked signals.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` is an initialised sigset_t; a null siginfo pointer is allowed.
    let s = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (s > 0).then_some(s)
}

/// SIGHUP: re-read the configuration and apply the difference in peers. A configuration that
/// fails to load, or that changes what cannot change while running, is rejected with the
/// reason, and the running configuration keeps serving untouched.
fn reload(running: &Config, shared: &Shared) {
    let path = running.path.display();
    let next = match crate::config::load(&running.path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%path, error = %e, "reload rejected, keeping the running configuration");
            return;
        }
    };
    if let Some(what) = fixed_setting_changed(running, &next) {
        tracing::error!(
            %path,
            error = %format!("{what} cannot change while running (restart sluice)"),
            "reload rejected, keeping the running configuration"
        );
        return;
    }
    let changes: Vec<PeerChange> = next
        .peers
        .iter()
        .map(|cfg| PeerChange::Upsert {
            cfg: cfg.clone(),
            update: crate::proto::peer::PeerUpdate::all_from(cfg),
            replace_allowed_ips: true,
            update_only: false,
        })
        .collect();
    match shared.apply(true, &changes) {
        Ok(s) => tracing::info!(
            %path,
            added = s.added,
            updated = s.updated,
            removed = s.removed,
            "reloaded"
        ),
        Err(e) => {
            tracing::error!(%path, error = %e, "reload rejected, keeping the running configuration")
        }
    }
}

/// The first setting a reload would change that needs a restart, if any.
fn fixed_setting_changed(a: &Config, b: &Config) -> Option<&'static str> {
    [
        (a.private_key[..] != b.private_key[..], "PrivateKey"),
        (a.listen_port != b.listen_port, "ListenPort"),
        (a.name != b.name, "the interface name"),
        (a.mtu != b.mtu, "MTU"),
        (a.addresses != b.addresses, "Address"),
        (a.dataplane != b.dataplane, "the [dataplane] section"),
        (a.ha != b.ha, "the [ha] section"),
    ]
    .into_iter()
    .find_map(|(changed, what)| changed.then_some(what))
}

/// Run the gateway until SIGINT or SIGTERM.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<(), RunError> {
    let signals = block_signals()?;
    let workers = cfg.dataplane.workers;
    fault::arm_from_env(workers).map_err(RunError::Fault)?;
    let tuns = (0..workers)
        .map(|_| TunQueue::open(&cfg.name))
        .collect::<Result<Vec<_>, _>>()?;
    tun::configure(&cfg.name, cfg.mtu, &cfg.addresses)?;
    let sockets = (0..workers)
        .map(|_| UdpSocket::bind(cfg.listen_port).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| RunError::Socket {
            port: cfg.listen_port,
            err,
        })?;
    let metrics = match cfg.metrics {
        Some(addr) => Some(
            crate::metrics::MetricsServer::bind(addr)
                .map_err(|err| RunError::Metrics { addr, err })?,
        ),
        None => None,
    };
    let uapi = crate::uapi::UapiServer::bind(&cfg.name).map_err(|err| RunError::Uapi {
        name: cfg.name.clone(),
        err,
    })?;
    let shared = Arc::new(Shared::new(
        &cfg.private_key,
        &cfg.peers,
        usize::from(cfg.mtu),
        workers,
    ));
    let ha = match &cfg.ha {
        Some(h) => {
            let ha = Arc::new(ha::Ha::new(h, shared.clock.now(), ha::epoch_now()));
            shared.index.set_partition(h.node, ha.held.clone());
            if h.mode == crate::config::ha::HaMode::Vrrp && !h.vips.is_empty() {
                for s in &sockets {
                    s.set_vip_gate(ha.gate.clone()).map_err(|e| {
                        RunError::Ha(format!("asking the kernel for destination addresses: {e}"))
                    })?;
                }
            }
            let _ = shared.ha.set(ha.clone());
            let socket = ha::bind(h).map_err(|e| {
                RunError::Ha(format!("binding the sync address {}: {e}", h.own_address()))
            })?;
            let ctl = control_sock::CtlServer::bind(&cfg.name).map_err(|e| {
                RunError::Ha(format!(
                    "binding {}: {e}",
                    control_sock::path(&cfg.name).display()
                ))
            })?;
            Some((ha, socket, ctl))
        }
        None => None,
    };
    shared.start_peers();
    let (hs_tx, hs_rx) = crossbeam_channel::bounded(HANDSHAKE_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let v4 = cfg.addresses.iter().find_map(|c| match c.addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    let v6 = cfg.addresses.iter().find_map(|c| match c.addr {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    });

    let (fast, why) = choose_dataplane(cfg, &sockets)?;
    let fast = fast.map(Arc::new);
    let mut stats = Vec::new();
    let mut threads = Vec::new();
    for (id, (tun, udp)) in tuns.into_iter().zip(&sockets).enumerate() {
        let s = Arc::new(WorkerStats::default());
        stats.push(s.clone());
        let core = cfg.dataplane.cores.get(id).copied();
        let xsk = fast.as_ref().and_then(|f| f.sockets.get(id).cloned());
        let appliance = fast.as_ref().and_then(|f| {
            let i = f.inner.as_ref()?;
            Some((i, i.sockets.get(id)?.clone()))
        });
        macro_rules! worker {
            ($udp:expr, $tun:expr) => {
                spawn_worker(
                    Worker {
                        id,
                        shared: shared.clone(),
                        udp: $udp,
                        tun: $tun,
                        handshakes: hs_tx.clone(),
                        handshake_capacity: HANDSHAKE_QUEUE,
                        stop: stop.clone(),
                        stats: s,
                        icmp: IcmpReplies::new(v4, v6),
                    },
                    core,
                )?
            };
        }
        let t = match (xsk, appliance) {
            (Some(xsk), Some((side, ixsk))) => worker!(
                xsk,
                xsk_inner::ApplianceInner::new(
                    ixsk,
                    tun,
                    side.mac,
                    side.ifindex,
                    side.next_hops.clone()
                )
            ),
            (Some(xsk), None) => worker!(xsk, tun),
            (None, _) => worker!(udp.clone(), tun),
        };
        threads.push(t);
    }
    // Kept only to read the queue depth for metrics; workers hold the senders that matter.
    let hs_tx_observe = hs_tx;
    // Handshakes cost ~200 µs of CPU each; half as many handshake threads as workers keeps a
    // flood from starving the data path while still using bigger machines.
    let hs_threads = (workers / 2).max(1);
    let hs_stats: Vec<Arc<WorkerStats>> = (0..hs_threads)
        .map(|_| Arc::new(WorkerStats::default()))
        .collect();
    for (i, s) in hs_stats.iter().enumerate() {
        let hs = HandshakeThread {
            shared: shared.clone(),
            udp: sockets[i % sockets.len()].clone(),
            jobs: hs_rx.clone(),
            stop: stop.clone(),
            stats: s.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("sluice-hs{i}"))
            .spawn(move || {
                let stats = hs.stats.clone();
                fault::run_contained("handshake", i, &stats, move || hs.run());
            });
        threads.push(t.map_err(RunError::Thread)?);
    }
    drop(hs_rx);
    if let Some((ha, socket, ctl)) = ha {
        // The sync thread reports (drops, heartbeat) through `ha.stats`, apart from the
        // handshake threads.
        let sync = ha::SyncThread {
            ha: ha.clone(),
            shared: shared.clone(),
            socket,
            stop: stop.clone(),
        };
        let t = std::thread::Builder::new()
            .name("sluice-ha-sync".into())
            .spawn(move || {
                let stats = sync.ha.stats.clone();
                fault::run_contained("ha sync", 0, &stats, move || sync.run());
            });
        threads.push(t.map_err(RunError::Thread)?);
        if let Some(f) = &fast {
            let (f, weak) = (f.clone(), Arc::downgrade(&ha));
            ha.set_on_role(Box::new(move || {
                if let Some(ha) = weak.upgrade() {
                    f.refresh_addrs_hiding(ha.hidden_vips());
                }
                // keepalived may add or remove the VIPs just after its notify hook ran: look
                // again shortly rather than at the main loop's next tick (1 s).
                let (f, weak) = (f.clone(), weak.clone());
                let _ = std::thread::Builder::new()
                    .name("sluice-vip-map".into())
                    .spawn(move || {
                        for ms in [20, 50, 100, 200, 400] {
                            std::thread::sleep(Duration::from_millis(ms));
                            match weak.upgrade() {
                                Some(ha) => f.refresh_addrs_hiding(ha.hidden_vips()),
                                None => return,
                            }
                        }
                    });
            }));
        }
        let (ctl_shared, ctl_stop) = (shared.clone(), stop.clone());
        let t = std::thread::Builder::new()
            .name("sluice-ctl".into())
            .spawn(move || {
                ctl.serve(&|line| ha.handle_ctl(&ctl_shared, line), &ctl_stop);
            });
        threads.push(t.map_err(RunError::Thread)?);
        log::info(&format!(
            "ha mode={} node={} members={} sync={} control={}",
            cfg.ha.as_ref().map_or("", |h| h.mode.label()),
            cfg.ha.as_ref().map_or(0, |h| h.node),
            cfg.ha.as_ref().map_or(0, |h| h.members.len()),
            cfg.ha.as_ref().is_some_and(|h| h.sync),
            control_sock::path(&cfg.name).display()
        ));
    }

    if let Some(server) = metrics {
        let per_peer = match cfg.metrics_per_peer {
            None => crate::metrics::PeerSeries::default(),
            Some(0) => crate::metrics::PeerSeries::Off,
            Some(n) => crate::metrics::PeerSeries::Cap(n),
        };
        let source = Arc::new(observe::GatewayObserver {
            interface: cfg.name.clone(),
            shared: shared.clone(),
            workers: stats.clone(),
            handshakes: hs_stats.clone(),
            queue: hs_tx_observe.clone(),
            fast: fast.clone(),
            udp: sockets.clone(),
        });
        let metrics_stop = stop.clone();
        let t = std::thread::Builder::new()
            .name("sluice-metrics".into())
            .spawn(move || {
                server
                    .with_peer_series(per_peer)
                    .serve(source, &metrics_stop)
            });
        threads.push(t.map_err(RunError::Thread)?);
    }
    let control = control::Control::new(shared.clone(), cfg);
    let uapi_stop = stop.clone();
    let uapi_thread = std::thread::Builder::new()
        .name("sluice-uapi".into())
        .spawn(move || {
            yield_to_data_path();
            if let Err(e) = uapi.serve(&control, &uapi_stop) {
                log::error(&format!("wg API socket stopped: {e}"));
            }
        })
        .map_err(RunError::Thread)?;
    threads.push(uapi_thread);

    log::info(&format!(
        "up interface={} public_key={} listen_port={} peers={} workers={} mode={} gro={} gso={}",
        cfg.name,
        crate::keys::encode_key(shared.identity.public_key()),
        cfg.listen_port,
        cfg.peers.len(),
        workers,
        if fast.is_some() { "xdp" } else { "socket" },
        sockets[0].gro(),
        sockets[0].gso()
    ));
    log::info(&format!(
        "dataplane mode={} because {why}",
        if fast.is_some() { "xdp" } else { "socket" }
    ));
    if let Some(f) = &fast {
        log::info(&f.describe());
        f.sync_prefixes(&shared.table());
    }
    let status = status::Status {
        cfg,
        shared: &shared,
        workers: &stats,
        handshakes: &hs_stats,
        fast: fast.as_deref(),
    };
    loop {
        match wait_signal(&signals, Duration::from_secs(1)) {
            Some(libc::SIGINT) | Some(libc::SIGTERM) => break,
            Some(libc::SIGHUP) => reload(cfg, &shared),
            _ => {}
        }
        if let Some(f) = &fast {
            f.refresh_addrs_hiding(shared.ha.get().map_or(&[], |h| h.hidden_vips()));
            f.sync_prefixes(&shared.table());
        }
        if let Some(path) = &opts.status_file {
            if let Err(e) = status.write(path) {
                log::warn(&format!("writing status file {}: {e}", path.display()));
            }
        }
        let now = shared.clock.now();
        for (i, s) in stats.iter().enumerate() {
            let beat = s.heartbeat.load(Ordering::Relaxed);
            // A worker that died was reported once, when it did.
            if s.exited.get().is_none()
                && now.as_nanos().saturating_sub(beat) > STUCK_AFTER.as_nanos() as u64
            {
                log::error(&format!(
                    "worker {i} has not run its loop for over {STUCK_AFTER:?}"
                ));
            }
        }
    }
    log::info("stopping");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if let Some(path) = &opts.status_file {
        let _ = status.write(path);
    }
    if let Some(f) = &fast {
        f.report_frames();
    }
    drop(fast);
    log::info(&format!("stopped interface={}", cfg.name));
    Ok(())
}
