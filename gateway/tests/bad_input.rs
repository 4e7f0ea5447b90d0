mod common;
use common::*;
use std::time::Instant;

#[test]
fn timing() {
    let t = Instant::now();
    for s in 0..10 {
        let (p, _, _) = Pair::new(s);
        drop(p);
    }
    eprintln!("pair new: {:?}", t.elapsed() / 10);
    let t = Instant::now();
    for s in 0..10 {
        let (mut p, _, _) = Pair::new(s);
        p.a_to_b(&ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x")).unwrap();
    }
    eprintln!("pair + handshake: {:?}", t.elapsed() / 10);
    let (mut p, _, _) = Pair::new(1);
    p.a_to_b(&ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x")).unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        p.a_to_b(&ipv4([10, 0, 0, 1], [10, 0, 0, 2], &[0u8; 1000]))
            .unwrap();
    }
    eprintln!("data 1000B: {:?}", t.elapsed() / 100);
}
