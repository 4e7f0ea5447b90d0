//! Network namespaces, veth pairs, addresses, routes and sysctls, and sockets opened inside a
//! namespace by this very process.

use super::{cmd, registry, Context, Daemon, Result};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A named network namespace (`ip netns add`), deleted on drop (`ip netns del`, which also
/// removes every veth end inside it and so the pair). Stop the processes running in it
/// first: a namespace lives on while any process is inside.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Create the namespace and bring its loopback up.
    pub fn new(name: &str) -> Result<Netns> {
        if Netns::exists(name) {
            return Err(err!("network namespace {name} already exists"));
        }
        cmd::run(None, &["ip", "netns", "add", name])?;
        registry::add_netns(name);
        let ns = Netns {
            name: name.to_string(),
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// True if `/var/run/netns/NAME` exists.
    pub fn exists(name: &str) -> bool {
        Netns::path_of(name).exists()
    }

    fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leave the namespace in place when dropped (for `--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
        registry::forget_netns(&self.name);
    }

    /// `ip netns exec NAME program`, ready for arguments.
    pub fn command(&self, program: &str) -> Command {
        cmd::command(Some(&self.name), &[program])
    }

    /// Start a long-running `argv` inside the namespace, output to `log`; it is stopped
    /// (SIGTERM, then SIGKILL) when the returned [`Daemon`] is dropped.
    pub fn spawn(&self, name: &str, argv: &[&str], log: &std::path::Path) -> Result<Daemon> {
        Daemon::spawn(name, cmd::command(Some(&self.name), argv), log, Vec::new())
    }

    /// Run `argv` inside the namespace; returns stdout, fails with stderr.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        cmd::run(Some(&self.name), argv)
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        cmd::run(None, &argv)
    }

    /// Set a sysctl inside the namespace, e.g. `net.ipv4.ip_forward` = `1`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Turn on IPv4 and IPv6 forwarding.
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Add an address (`10.0.0.1/24`, `fd00::1/64`) to `dev`. IPv6 addresses get `nodad` so
    /// they are usable at once instead of after duplicate address detection.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])
        }
        .map(|_| ())
    }

    pub fn del_addr(&self, dev: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "del", cidr, "dev", dev]).map(|_| ())
    }

    /// `ip link set DEV up`, with an MTU if given.
    pub fn link_up(&self, dev: &str, mtu: Option<u16>) -> Result<()> {
        match mtu {
            Some(m) => self.ip(&["link", "set", dev, "mtu", &m.to_string(), "up"]),
            None => self.ip(&["link", "set", dev, "up"]),
        }
        .map(|_| ())
    }

    /// Route `dest` (a prefix) via a gateway address and/or out of a device.
    pub fn add_route(&self, dest: &str, via: Option<IpAddr>, dev: Option<&str>) -> Result<()> {
        let via = via.map(|v| v.to_string());
        let mut args = vec![if dest.contains(':') { "-6" } else { "-4" }, "route", "add"];
        args.push(dest);
        if let Some(v) = via.as_deref() {
            args.extend(["via", v]);
        }
        if let Some(d) = dev {
            args.extend(["dev", d]);
        }
        self.ip(&args).map(|_| ())
    }

    /// True if a link named `dev` exists in the namespace.
    pub fn link_exists(&self, dev: &str) -> bool {
        self.ip(&["link", "show", "dev", dev]).is_ok()
    }

    /// Names of all links in the namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect())
    }

    /// Run `f` on a fresh thread that has joined this namespace (`setns(2)`), and return its
    /// result. Sockets created by `f` stay in this namespace for their whole life, whichever
    /// thread uses them afterwards: that is how the tests exchange traffic without helper
    /// programs.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Netns::path_of(&self.name);
        let file =
            std::fs::File::open(&path).ctx(|| format!("opening namespace {}", path.display()))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: `file` is an open namespace file that outlives the call; setns only
                // moves the calling thread, which is this scoped thread, and it ends when `f`
                // returns, so no other code runs in the wrong namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(err!(
                        "setns into {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| err!("a thread inside namespace {} panicked", self.name))?
        })
    }

    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.enter(|| UdpSocket::bind(addr))?
            .ctx(|| format!("binding UDP {addr} in {}", self.name))
    }

    /// A TCP listener on `addr` inside this namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.enter(|| TcpListener::bind(addr))?
            .ctx(|| format!("listening on TCP {addr} in {}", self.name))
    }

    /// Connect to `addr` from this namespace, retrying refused or timed-out attempts until
    /// `timeout` (the tunnel may still be coming up).
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let attempt = left.clamp(Duration::from_millis(100), Duration::from_secs(3));
            match self.enter(|| TcpStream::connect_timeout(&addr, attempt))? {
                Ok(s) => return Ok(s),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(err!(
                        "connecting to TCP {addr} from {} for {:.0} s: {e}",
                        self.name,
                        timeout.as_secs_f64()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A raw IPv4 socket that receives a copy of every UDP datagram arriving in this
    /// namespace, IP header included (for capturing WireGuard packets to replay).
    pub fn raw_udp4_socket(&self) -> Result<UdpSocket> {
        let fd = self
            .enter(|| {
                // SAFETY: socket(2) with constant arguments; the result is checked before use.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
                if fd < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    // SAFETY: fd is a fresh descriptor that nothing else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            })?
            .ctx(|| format!("opening a raw UDP socket in {}", self.name))?;
        // A datagram socket for std's purposes: recv returns one packet, timeouts work.
        Ok(UdpSocket::from(fd))
    }

    /// A packet socket that sees every IPv4 packet on every interface of this namespace,
    /// received, sent or forwarded (unlike a raw socket, which sees only what is delivered
    /// locally, and nothing an XDP program redirected). `SOCK_DGRAM`: each read returns one
    /// IPv4 packet without its link-layer header.
    pub fn packet_ipv4_socket(&self) -> Result<UdpSocket> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        let fd = self
            .enter(|| {
                // SAFETY: socket(2) with constant arguments; the result is checked before use.
                let fd =
                    unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
                if fd < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    // SAFETY: fd is a fresh descriptor that nothing else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            })?
            .ctx(|| format!("opening a packet socket in {}", self.name))?;
        Ok(UdpSocket::from(fd))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = cmd::run(None, &["ip", "netns", "del", &self.name]);
            registry::forget_netns(&self.name);
        }
    }
}

/// A veth pair created directly inside two namespaces (never in the caller's), both ends up.
/// Names must be at most 15 characters. `queues` sets numrxqueues/numtxqueues on both ends
/// (veth has no RSS; multi-queue needs this at creation).
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str, queues: Option<u16>) -> Result<()> {
    for d in [a_dev, b_dev] {
        if d.is_empty() || d.len() > 15 {
            return Err(err!("interface name '{d}' must be 1-15 characters"));
        }
    }
    let q = queues.map(|q| q.to_string());
    let mut args = vec!["ip", "link", "add", a_dev, "netns", a.name()];
    if let Some(q) = q.as_deref() {
        args.extend(["numrxqueues", q, "numtxqueues", q]);
    }
    args.extend(["type", "veth", "peer", "name", b_dev, "netns", b.name()]);
    if let Some(q) = q.as_deref() {
        args.extend(["numrxqueues", q, "numtxqueues", q]);
    }
    cmd::run(None, &args)?;
    a.link_up(a_dev, None)?;
    b.link_up(b_dev, None)
}
