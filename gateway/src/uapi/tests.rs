//! Unit tests for the sans-IO parts: parsing, formatting, framing, and the server over a
//! socket in a temporary directory (no root needed).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::*;

fn key(b: u8) -> [u8; 32] {
    [b; 32]
}

fn hx(b: u8) -> String {
    hex_key(&key(b))
}

fn errno_of(text: &str) -> i32 {
    parse_set(text).unwrap_err().errno()
}

#[test]
fn parses_a_full_request() {
    let body = format!(
        "private_key={}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
         public_key={}\npreshared_key={}\nendpoint=192.0.2.1:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
         allowed_ip=10.0.0.0/24\nallowed_ip=fd00::1/128\nprotocol_version=1\n\
         public_key={}\nremove=true\n\
         public_key={}\nupdate_only=true\nendpoint=[2001:db8::1]:443\n\n",
        hx(1),
        hx(2),
        hx(3),
        hx(4),
        hx(5)
    );
    let req = parse_set(&body).unwrap();
    assert_eq!(req.private_key, Some(Some(SecretKey::new(key(1)))));
    assert_eq!(req.listen_port, Some(51820));
    assert_eq!(req.fwmark, Some(0));
    assert!(req.replace_peers);
    assert_eq!(req.peers.len(), 3);
    let p = &req.peers[0];
    assert_eq!(p.public_key, key(2));
    assert_eq!(p.preshared_key, Some(Some(SecretKey::new(key(3)))));
    assert_eq!(p.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
    assert_eq!(p.persistent_keepalive, Some(25));
    assert!(p.replace_allowed_ips && !p.remove && !p.update_only);
    let v6: IpAddr = "fd00::1".parse().unwrap();
    assert_eq!(
        p.allowed_ips,
        vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 24), (v6, 128)]
    );
    assert!(req.peers[1].remove);
    assert!(req.peers[2].update_only);
    assert_eq!(
        req.peers[2].endpoint,
        Some("[2001:db8::1]:443".parse().unwrap())
    );
}

#[test]
fn zero_keys_mean_remove() {
    let zero = "0".repeat(64);
    let req = parse_set(&format!(
        "private_key={zero}\npublic_key={}\npreshared_key={zero}\n",
        hx(9)
    ))
    .unwrap();
    assert_eq!(req.private_key, Some(None));
    assert_eq!(req.peers[0].preshared_key, Some(None));
}

#[test]
fn empty_body_is_a_no_op() {
    assert_eq!(parse_set("").unwrap(), SetRequest::default());
    assert_eq!(parse_set("\n").unwrap(), SetRequest::default());
}

#[test]
fn host_bits_are_cleared_and_uppercase_hex_accepted() {
    let upper = hx(0xab).to_uppercase();
    let req = parse_set(&format!("public_key={upper}\nallowed_ip=10.1.2.3/8\n")).unwrap();
    assert_eq!(req.peers[0].public_key, key(0xab));
    assert_eq!(req.peers[0].allowed_ips[0].0.to_string(), "10.0.0.0");
    let req = parse_set(&format!("public_key={upper}\nallowed_ip=0.0.0.0/0\n")).unwrap();
    assert_eq!(req.peers[0].allowed_ips[0].1, 0);
}

#[test]
fn malformed_keys_are_einval() {
    let einval = libc::EINVAL;
    assert_eq!(errno_of(&format!("private_key={}\n", &hx(1)[..63])), einval);
    assert_eq!(errno_of(&format!("private_key={}0\n", hx(1))), einval);
    assert_eq!(errno_of(&format!("private_key={}\n", &hx(1)[..62])), einval);
    assert_eq!(
        errno_of(&format!("private_key=zz{}\n", &hx(1)[2..])),
        einval
    );
    assert_eq!(errno_of("public_key=zz\n"), einval);
    assert_eq!(errno_of("public_key=\n"), einval);
    let spaced = format!("public_key= {}\n", &hx(1)[1..]);
    assert_eq!(errno_of(&spaced), einval);
}

#[test]
fn malformed_values_are_einval() {
    let p = format!("public_key={}\n", hx(1));
    for bad in [
        "listen_port=65536\n".to_owned(),
        "listen_port=+1\n".to_owned(),
        "listen_port=\n".to_owned(),
        "listen_port=-1\n".to_owned(),
        "fwmark=4294967296\n".to_owned(),
        "replace_peers=false\n".to_owned(),
        format!("{p}allowed_ip=10.0.0.0/33\n"),
        format!("{p}allowed_ip=::/129\n"),
        format!("{p}allowed_ip=10.0.0.0\n"),
        format!("{p}allowed_ip=10.0.0.0/\n"),
        format!("{p}allowed_ip=10.0.0.0/+8\n"),
        format!("{p}allowed_ip=10.0.0/8\n"),
        format!("{p}endpoint=192.0.2.1\n"),
        format!("{p}endpoint=::1:51820\n"),
        format!("{p}endpoint=[::1]\n"),
        format!("{p}endpoint=example.com:51820\n"),
        format!("{p}endpoint=[fe80::1%nosuchif0]:1\n"),
        format!("{p}persistent_keepalive_interval=65536\n"),
        format!("{p}remove=yes\n"),
        format!("{p}update_only=1\n"),
        format!("{p}replace_allowed_ips=TRUE\n"),
    ] {
        assert_eq!(errno_of(&bad), libc::EINVAL, "{bad:?}");
    }
}

#[test]
fn ordering_and_unknown_keys() {
    let p = format!("public_key={}\n", hx(1));
    let misplaced = [
        "allowed_ip=10.0.0.0/8\n".to_owned(),
        "endpoint=192.0.2.1:1\n".to_owned(),
        "protocol_version=1\n".to_owned(),
        format!("preshared_key={}\n", hx(2)),
        format!("{p}listen_port=1\n"),
        format!("{p}private_key={}\n", hx(2)),
    ];
    for text in misplaced {
        let err = parse_set(&text).unwrap_err();
        assert!(
            matches!(err, UapiError::Misplaced { .. }),
            "{text:?}: {err:?}"
        );
        assert_eq!(err.errno(), libc::EINVAL);
    }
    let err = parse_set("bogus=1\n").unwrap_err();
    assert_eq!(
        err,
        UapiError::UnknownKey {
            line: 2,
            key: "bogus".into()
        }
    );
    assert_eq!(errno_of(&format!("{p}bogus=1\n")), libc::EINVAL);
    assert_eq!(errno_of(&format!("{p}protocol_version=2\n")), libc::EINVAL);
    assert_eq!(errno_of("listen_port\n"), libc::EPROTO);
    assert_eq!(errno_of("listen_port=1\n\nfwmark=1\n"), libc::EPROTO);
}

#[test]
fn errors_never_echo_values() {
    let secret = hx(0x5a);
    let text = format!("private_key={}\n", &secret[..63]);
    let err = parse_set(&text).unwrap_err();
    assert!(!err.to_string().contains(&secret[..63]));
    assert!(!format!("{err:?}").contains(&secret[..63]));
    let req = parse_set(&format!("private_key={secret}\n")).unwrap();
    assert!(!format!("{req:?}").contains("5a5a"));
    assert!(!format!("{req:?}").contains("90, 90"));
}

#[test]
fn scoped_ipv6_endpoints() {
    let p = format!("public_key={}\n", hx(1));
    let req = parse_set(&format!("{p}endpoint=[fe80::1%3]:443\n")).unwrap();
    let want = SocketAddrV6::new("fe80::1".parse().unwrap(), 443, 0, 3);
    assert_eq!(req.peers[0].endpoint, Some(SocketAddr::V6(want)));
    // getnameinfo names the scope by interface; `lo` is index 1 everywhere.
    let req = parse_set(&format!("{p}endpoint=[fe80::1%lo]:443\n")).unwrap();
    let want = SocketAddrV6::new("fe80::1".parse().unwrap(), 443, 0, 1);
    assert_eq!(req.peers[0].endpoint, Some(SocketAddr::V6(want)));
}

fn sample_state() -> DeviceState {
    let mut p1 = PeerState::new(key(2));
    p1.preshared_key = Some(SecretKey::new(key(3)));
    p1.endpoint = Some("192.0.2.1:51820".parse().unwrap());
    p1.last_handshake = Some((1_700_000_000, 123_456_789));
    p1.tx_bytes = 1000;
    p1.rx_bytes = 2000;
    p1.persistent_keepalive = 25;
    p1.allowed_ips = vec![
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 32),
        (IpAddr::V6("fd00::".parse::<Ipv6Addr>().unwrap()), 64),
    ];
    let mut p2 = PeerState::new(key(4));
    let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 443, 0, 3);
    p2.endpoint = Some(SocketAddr::V6(scoped));
    DeviceState {
        private_key: Some(SecretKey::new(key(1))),
        listen_port: 51820,
        fwmark: 7,
        peers: vec![p1, p2],
    }
}

#[test]
fn get_output_is_exact() {
    let expected = format!(
        "private_key={}\nlisten_port=51820\nfwmark=7\n\
         public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.1:51820\n\
         last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\n\
         tx_bytes=1000\nrx_bytes=2000\npersistent_keepalive_interval=25\n\
         allowed_ip=10.0.0.2/32\nallowed_ip=fd00::/64\n\
         public_key={}\nprotocol_version=1\nendpoint=[fe80::1%3]:443\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
         tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n\
         errno=0\n\n",
        hx(1),
        hx(2),
        hx(3),
        hx(4)
    );
    assert_eq!(*format_get(&sample_state()), expected);
    let empty = DeviceState::default();
    assert_eq!(*format_get(&empty), "listen_port=0\nerrno=0\n\n");
}

#[test]
fn get_output_parses_back_as_set() {
    // The `set` subset of a `get` answer round-trips through parse_set.
    let state = sample_state();
    let text = format_get(&state);
    let settable: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("last_handshake")
                && !l.ends_with("_bytes=0")
                && !l.contains("_bytes=")
                && !l.starts_with("errno")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let req = parse_set(&settable).unwrap();
    assert_eq!(req.private_key, Some(state.private_key.clone()));
    assert_eq!(req.listen_port, Some(51820));
    assert_eq!(req.fwmark, Some(7));
    for (change, peer) in req.peers.iter().zip(&state.peers) {
        assert_eq!(change.public_key, peer.public_key);
        assert_eq!(
            change.preshared_key.clone().flatten(),
            peer.preshared_key.clone()
        );
        assert_eq!(change.endpoint, peer.endpoint);
        assert_eq!(change.persistent_keepalive, Some(peer.persistent_keepalive));
        assert_eq!(change.allowed_ips, peer.allowed_ips);
    }
}

fn framer() -> Framer {
    Framer::new(Limits {
        max_line: 128,
        max_request: 1024,
    })
}

#[test]
fn framing_splits_pipelined_requests_fed_bytewise() {
    let stream = format!(
        "\nget=1\n\nset=1\nlisten_port=1\n\nset=1\nbogus=1\n\nget=1\n\n\
         set=1\npublic_key={}\n\n",
        hx(1)
    );
    let mut f = framer();
    let mut out = Vec::new();
    for b in stream.as_bytes() {
        f.push(std::slice::from_ref(b));
        while let Some(r) = f.next_request() {
            out.push(r);
        }
    }
    assert_eq!(out.len(), 5);
    assert_eq!(out[0], Ok(Request::Get));
    let set = SetRequest {
        listen_port: Some(1),
        ..SetRequest::default()
    };
    assert_eq!(out[1], Ok(Request::Set(set)));
    assert_eq!(out[2].as_ref().unwrap_err().errno(), libc::EINVAL);
    assert_eq!(out[3], Ok(Request::Get));
    assert!(matches!(&out[4], Ok(Request::Set(s)) if s.peers.len() == 1));
    assert!(!f.in_request());
    assert_eq!(f.finish(), None);
}

#[test]
fn framing_request_level_errors() {
    let cases: [(&[u8], i32); 4] = [
        (b"get=1\nlisten_port=1\n\n", libc::EINVAL),
        (b"frob=1\n\n", libc::EINVAL),
        (b"set=1\nlisten_port=\xff\n\n", libc::EPROTO),
        (b"set=1\nno equals sign\n\n", libc::EPROTO),
    ];
    for (input, errno) in cases {
        let mut f = framer();
        f.push(input);
        let err = f.next_request().unwrap().unwrap_err();
        assert_eq!(err.errno(), errno, "{input:?}");
        assert!(!err.is_fatal());
        f.push(b"get=1\n\n");
        assert_eq!(f.next_request(), Some(Ok(Request::Get)));
    }
}

#[test]
fn framing_enforces_limits() {
    let mut f = framer();
    f.push(&[b'a'; 129]);
    let err = f.next_request().unwrap().unwrap_err();
    assert_eq!(err, UapiError::LineTooLong { max: 128 });
    assert_eq!(err.errno(), libc::EMSGSIZE);
    assert!(err.is_fatal() && f.is_broken());
    f.push(b"get=1\n\n");
    assert_eq!(f.next_request(), None);

    let mut f = framer();
    f.push(b"set=1\n");
    for _ in 0..100 {
        f.push(b"listen_port=1\n");
    }
    let err = f.next_request().unwrap().unwrap_err();
    assert_eq!(err, UapiError::RequestTooLarge { max: 1024 });

    // Exactly at the line limit is fine.
    let mut f = framer();
    let line = format!("set=1\nfwmark={}\n\n", "0".repeat(121));
    f.push(line.as_bytes());
    assert!(matches!(f.next_request(), Some(Ok(Request::Set(_)))));
}

#[test]
fn framing_reports_truncation() {
    let mut f = framer();
    f.push(b"set=1\nlisten_port=1\n");
    assert_eq!(f.next_request(), None);
    assert!(f.in_request());
    assert_eq!(f.finish(), Some(UapiError::Truncated));
}

#[test]
fn huge_input_is_refused_quickly() {
    let mut f = Framer::new(Limits::default());
    let chunk = vec![b'x'; 64 * 1024];
    let mut refused = None;
    for _ in 0..160 {
        f.push(&chunk);
        if let Some(r) = f.next_request() {
            refused = Some(r);
            break;
        }
    }
    assert_eq!(
        refused.unwrap().unwrap_err().errno(),
        libc::EMSGSIZE,
        "a 10 MB line must be refused"
    );
}

struct Fixed(Mutex<Vec<SetRequest>>);

impl UapiHandler for Fixed {
    fn get(&self) -> DeviceState {
        sample_state()
    }
    fn set(&self, req: SetRequest) -> Result<(), i32> {
        let fail = req.listen_port == Some(1);
        self.0.lock().unwrap().push(req);
        if fail {
            Err(-libc::EADDRINUSE)
        } else {
            Ok(())
        }
    }
}

fn read_reply(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\n\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF after {out:?}");
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn server_in_a_temp_dir() {
    let dir = std::env::temp_dir().join(format!("sluice-uapi-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = UapiServer::bind_in(&dir, "unit0").unwrap();
    let path = server.path().to_owned();
    assert!(matches!(
        UapiServer::bind_in(&dir, "unit0").map_err(|e| e.kind()),
        Err(std::io::ErrorKind::AddrInUse)
    ));
    assert!(UapiServer::bind_in(&dir, "bad/name").is_err());
    let handler = Fixed(Mutex::new(Vec::new()));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| server.serve(&handler, &stop).unwrap());
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"get=1\n\nset=1\nlisten_port=1\n\nset=1\nfwmark=3\n\n")
            .unwrap();
        assert_eq!(read_reply(&mut c), *format_get(&sample_state()));
        assert_eq!(read_reply(&mut c), "errno=98\n\n");
        assert_eq!(read_reply(&mut c), "errno=0\n\n");
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(handler.0.lock().unwrap().len(), 2);
    drop(server);
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
