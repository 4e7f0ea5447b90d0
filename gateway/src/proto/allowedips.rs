//! (temporary naive stand-in until the trie lands; same API)
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixError {
    TooLong { len: u8, max: u8 },
}

#[derive(Clone, Debug, Default)]
pub struct AllowedIps<T> {
    v: Vec<(IpAddr, u8, T)>,
}

fn mask(a: IpAddr, l: u8) -> Result<IpAddr, PrefixError> {
    match a {
        IpAddr::V4(x) => {
            if l > 32 {
                return Err(PrefixError::TooLong { len: l, max: 32 });
            }
            let m = if l == 0 { 0 } else { u32::MAX << (32 - l) };
            Ok(IpAddr::V4(Ipv4Addr::from(u32::from(x) & m)))
        }
        IpAddr::V6(x) => {
            if l > 128 {
                return Err(PrefixError::TooLong { len: l, max: 128 });
            }
            let m = if l == 0 { 0 } else { u128::MAX << (128 - l) };
            Ok(IpAddr::V6(Ipv6Addr::from(u128::from(x) & m)))
        }
    }
}

impl<T: Copy + Eq> AllowedIps<T> {
    pub fn new() -> Self {
        AllowedIps { v: Vec::new() }
    }
    pub fn insert(&mut self, a: IpAddr, l: u8, val: T) -> Result<Option<T>, PrefixError> {
        let a = mask(a, l)?;
        for e in &mut self.v {
            if e.0 == a && e.1 == l {
                let old = e.2;
                e.2 = val;
                return Ok(Some(old));
            }
        }
        self.v.push((a, l, val));
        Ok(None)
    }
    pub fn remove_value(&mut self, val: T) -> usize {
        let n = self.v.len();
        self.v.retain(|e| e.2 != val);
        n - self.v.len()
    }
    pub fn lookup(&self, a: IpAddr) -> Option<T> {
        self.v
            .iter()
            .filter(|e| mask(a, e.1).ok() == Some(e.0))
            .max_by_key(|e| e.1)
            .map(|e| e.2)
    }
    pub fn prefixes_of(&self, val: T) -> Vec<(IpAddr, u8)> {
        self.v
            .iter()
            .filter(|e| e.2 == val)
            .map(|e| (e.0, e.1))
            .collect()
    }
}
