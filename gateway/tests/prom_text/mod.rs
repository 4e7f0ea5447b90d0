//! A strict parser of the Prometheus text exposition format 0.0.4, shared by the tests that
//! scrape `/metrics` (a fake source over loopback in `metrics_http.rs`, the running daemon in
//! `netns_operations.rs`). Anything the format does not allow fails the test.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::{BTreeMap, HashMap};

/// One sample: name, labels in order, value.
pub type Series = (String, Vec<(String, String)>, f64);

#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub helps: HashMap<String, String>,
    pub samples: Vec<Series>,
}

impl Exposition {
    /// The value of the one sample with this name and exactly these labels (in any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect::<BTreeMap<_, _>>()
                        == want
            })
            .map(|s| s.2)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: found {found:?}");
        found[0]
    }

    pub fn of(&self, name: &str) -> Vec<&Series> {
        self.samples.iter().filter(|s| s.0 == name).collect()
    }
}

/// Parse the text exposition format 0.0.4, rejecting anything it does not allow.
pub fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let (kind, rest) = rest.split_once(' ').unwrap();
            let (name, value) = rest.split_once(' ').unwrap();
            assert!(valid_name(name), "{line}");
            let map = match kind {
                "TYPE" => &mut e.types,
                "HELP" => &mut e.helps,
                _ => continue,
            };
            assert!(
                map.insert(name.into(), value.into()).is_none(),
                "repeated {line}"
            );
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        e.samples.push(parse_sample(line));
    }
    e
}

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn parse_sample(line: &str) -> Series {
    let name_end = line.find(['{', ' ']).expect(line);
    let name = &line[..name_end];
    assert!(valid_name(name), "{line}");
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        while !r.starts_with('}') {
            let (k, after) = r.split_once("=\"").expect(line);
            assert!(valid_name(k), "{line}");
            let (v, after) = unescape(after).expect(line);
            labels.push((k.to_string(), v));
            r = after.strip_prefix(',').unwrap_or(after);
        }
        rest = &r[1..];
    }
    let mut fields = rest.trim_start_matches(' ').split(' ');
    let value = match fields.next().expect(line) {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().expect(line),
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().expect(line);
    }
    assert!(fields.next().is_none(), "{line}");
    (name.to_string(), labels, value)
}

/// A label value up to its closing quote; returns it and what follows the quote.
fn unescape(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}
