//! The protocol core stays sans-IO.
//!
//! `src/proto/` must not touch a socket, file, thread, process, clock, environment, console or
//! global RNG, and must not lock: the caller passes in time and randomness, carries out the
//! transmits, and owns the core exclusively (locking belongs to the I/O layer). That is what
//! lets the same core run under the simulated clock in these tests, on the XDP fast path and on
//! the portable fallback. This test reads every `.rs` file under `src/proto/` and fails, naming
//! the file and line, on any forbidden use outside comments.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Forbidden uses, and why. A pattern matches as whole tokens: where it begins or ends with an
/// identifier character, the neighbouring character must not be one, so `Mutex` does not match
/// `NoMutex` and `mio` does not match `premio`.
const FORBIDDEN: &[(&str, &str)] = &[
    // Sockets.
    ("std::net::UdpSocket", "a socket"),
    ("UdpSocket", "a socket"),
    ("TcpStream", "a socket"),
    ("TcpListener", "a socket"),
    ("UnixStream", "a socket"),
    ("UnixDatagram", "a socket"),
    // Files.
    ("std::fs", "the file system"),
    ("fs::", "the file system"),
    ("File::", "a file"),
    ("OpenOptions", "a file"),
    // Threads and processes.
    ("std::thread", "a thread"),
    ("thread::spawn", "a thread"),
    ("thread::sleep", "sleeping on a thread"),
    ("std::process", "a process"),
    ("Command::new", "a process"),
    // Clocks: the caller passes `Time` and `WallTime`.
    ("Instant::now", "reading the monotonic clock"),
    ("std::time::Instant", "the monotonic clock"),
    (
        "Instant",
        "std's monotonic clock type (the core uses `Time`)",
    ),
    ("SystemTime", "reading the wall clock"),
    ("UNIX_EPOCH", "the wall clock"),
    // Global randomness: the caller passes an `Rng`.
    ("thread_rng", "a global RNG"),
    ("OsRng", "the OS RNG"),
    ("getrandom", "the OS RNG"),
    ("rand::random", "a global RNG"),
    ("rand::rng", "a global RNG"),
    // Environment and console.
    ("std::env", "the environment"),
    ("env::", "the environment"),
    ("std::io::stdin", "the console"),
    ("stdin", "the console"),
    ("io::stdout", "the console"),
    ("io::stderr", "the console"),
    ("println!", "the console"),
    ("eprintln!", "the console"),
    ("print!", "the console"),
    ("eprint!", "the console"),
    ("dbg!", "the console"),
    // The OS and async runtimes.
    ("libc::", "a system call"),
    ("nix::", "a system call"),
    ("socket2", "a socket library"),
    ("tokio", "an async runtime"),
    ("mio", "an event loop"),
    // Locks and shared global state: the core has a single owner.
    ("Mutex", "a lock"),
    ("RwLock", "a lock"),
    ("Condvar", "a lock"),
    ("static mut", "global mutable state"),
    ("thread_local!", "thread-local state"),
];

/// One forbidden use found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    /// 1-based line number.
    line: usize,
    pattern: &'static str,
    why: &'static str,
    text: String,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `source` with every comment (line, doc and nested block comments) replaced by spaces and the
/// newlines kept, so line numbers still match. String and char literals are kept (a forbidden
/// word inside one is flagged, which is fine), but are tracked so that a `//` or `/*` inside a
/// literal is not mistaken for a comment that would hide the code after it.
fn strip_comments(source: &str) -> String {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum State {
        Code,
        Line,
        Block(u32),
        Str,
        RawStr(usize),
    }
    let c: Vec<char> = source.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut out = String::with_capacity(source.len());
    let mut state = State::Code;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        match state {
            State::Code => {
                if ch == '/' && at(i + 1) == '/' {
                    state = State::Line;
                    continue;
                }
                if ch == '/' && at(i + 1) == '*' {
                    state = State::Block(1);
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                if ch == '"' {
                    state = State::Str;
                } else if ch == 'r' && (at(i + 1) == '"' || at(i + 1) == '#') {
                    // r"..." or r#"..."#, possibly after b; not the end of an identifier.
                    let prev = if i == 0 { '\0' } else { c[i - 1] };
                    let prev2 = if i < 2 { '\0' } else { c[i - 2] };
                    let starts_token = !is_ident(prev) || (prev == 'b' && !is_ident(prev2));
                    let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
                    if starts_token && at(i + 1 + hashes) == '"' {
                        out.extend(&c[i..i + 2 + hashes]);
                        i += 2 + hashes;
                        state = State::RawStr(hashes);
                        continue;
                    }
                } else if ch == '\'' {
                    // A char literal ('x', '\n', '\'', '"'); otherwise a lifetime or label.
                    let end = if at(i + 1) == '\\' {
                        (i + 3..c.len()).find(|&j| c[j] == '\'')
                    } else if at(i + 2) == '\'' {
                        Some(i + 2)
                    } else {
                        None
                    };
                    if let Some(end) = end {
                        out.extend(&c[i..=end]);
                        i = end + 1;
                        continue;
                    }
                }
                out.push(ch);
            }
            State::Line => {
                if ch == '\n' {
                    state = State::Code;
                }
                out.push(blank(ch));
            }
            State::Block(depth) => {
                if ch == '/' && at(i + 1) == '*' {
                    state = State::Block(depth + 1);
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                if ch == '*' && at(i + 1) == '/' {
                    state = if depth == 1 {
                        State::Code
                    } else {
                        State::Block(depth - 1)
                    };
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                out.push(blank(ch));
            }
            State::Str => {
                if ch == '\\' {
                    out.push(ch);
                    out.push(at(i + 1));
                    i += 2;
                    continue;
                }
                if ch == '"' {
                    state = State::Code;
                }
                out.push(ch);
            }
            State::RawStr(hashes) => {
                if ch == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    out.extend(&c[i..=i + hashes]);
                    i += 1 + hashes;
                    state = State::Code;
                    continue;
                }
                out.push(ch);
            }
        }
        i += 1;
    }
    out
}

/// Does `line` use `pattern` as whole tokens?
fn uses(line: &str, pattern: &str) -> bool {
    let starts_ident = pattern.starts_with(is_ident);
    let ends_ident = pattern.ends_with(is_ident);
    line.match_indices(pattern).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + pattern.len()..].chars().next();
        let glued_before = starts_ident && before.is_some_and(is_ident);
        let glued_after = ends_ident && after.is_some_and(is_ident);
        !glued_before && !glued_after
    })
}

/// Every forbidden use in a Rust source file, outside comments.
fn violations(source: &str) -> Vec<Violation> {
    let code = strip_comments(source);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for &(pattern, why) in FORBIDDEN {
            if uses(line, pattern) {
                found.push(Violation {
                    line: n + 1,
                    pattern,
                    why,
                    text: line.trim().to_string(),
                });
            }
        }
    }
    found
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("in {dir:?}: {e}")).path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn protocol_core_does_no_io_reads_no_clock_and_uses_no_global_rng() {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("proto");
    let files = rust_files(&proto);
    // A wrong path must not make this pass vacuously.
    assert!(
        files.len() >= 10,
        "found only {} .rs files under {}: {files:?}",
        files.len(),
        proto.display()
    );
    assert!(files.iter().any(|f| f.ends_with("proto/mod.rs")));

    let mut report = String::new();
    for file in &files {
        let source =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {file:?}: {e}"));
        for v in violations(&source) {
            let _ = writeln!(
                report,
                "{}:{}: `{}` ({}): {}",
                file.display(),
                v.line,
                v.pattern,
                v.why,
                v.text
            );
        }
    }
    assert!(
        report.is_empty(),
        "the protocol core must stay sans-IO; the caller passes time and randomness and does \
         the I/O:\n{report}"
    );
}

/// The checker itself can fail: a clock read is flagged at the right line, among others.
#[test]
fn checker_flags_forbidden_uses_in_code() {
    let snippet = "fn f() {\n    let t = std::time::Instant::now();\n}\n";
    let found = violations(snippet);
    assert!(
        found
            .iter()
            .any(|v| v.line == 2 && v.pattern == "Instant::now"),
        "{found:?}"
    );
    assert!(found.iter().all(|v| v.line == 2), "{found:?}");

    let snippet = r#"
use std::sync::Mutex;
fn g<'a>(x: &'a str) -> char {
    let url = "http://example.invalid"; let s = UdpSocket::bind(x);
    let q = '"'; let r = OsRng;
    let raw = r"/* not a comment"; thread::spawn(|| ());
    'outer: loop { println!("{}", x); break 'outer; }
    '/'
}
"#;
    let lines: Vec<(usize, &str)> = violations(snippet)
        .iter()
        .map(|v| (v.line, v.pattern))
        .collect();
    for want in [
        (2, "Mutex"),
        (4, "UdpSocket"),
        (5, "OsRng"),
        (6, "thread::spawn"),
        (7, "println!"),
    ] {
        assert!(lines.contains(&want), "{want:?} not flagged: {lines:?}");
    }
}

/// Clean code passes, and so does every forbidden word inside a comment.
#[test]
fn checker_passes_clean_code_and_comments() {
    let clean = r#"
//! Module docs may say std::time::Instant::now() and UdpSocket.
use super::{Rng, Time};

/// Doc comments may mention thread_rng, println!, and a Mutex.
pub fn next_deadline(now: Time, rng: &mut dyn Rng) -> Time {
    let premio = rng.next_u32(); // trailing comment: SystemTime::now(), std::fs::File::open
    /* block comment: tokio::spawn, /* nested: libc::socket */ still a comment: getrandom */
    struct NoMutexHere<'a>(&'a [u8]);
    let _ = NoMutexHere(b"bytes");
    let c = '\'';
    now + core::time::Duration::from_nanos(u64::from(premio) + c as u64)
}
"#;
    assert_eq!(violations(clean), vec![]);
    // Comments are blanked, not removed: line numbers survive.
    assert_eq!(strip_comments(clean).lines().count(), clean.lines().count());
}
