//! Receiver indices: the 32-bit session identifiers carried in every message after the first
//! (whitepaper §5.4.2–§5.4.6, Linux `peerlookup.c`'s index hashtable).
//!
//! Each side picks a random index for every handshake and keypair it owns and sends it as the
//! "sender" field; the peer echoes it back as "receiver". That makes finding the session for an
//! incoming response, cookie reply or data packet a single table lookup, with no trial
//! decryption and no dependence on the source address, which is what lets a peer roam.
//!
//! The indices are random rather than sequential, as the whitepaper requires, so an observer can't
//! infer how many sessions a gateway holds or predict the index of the next one. Uniqueness is
//! only needed among live entries: like the kernel, [`IndexTable::insert`] draws again on a
//! collision. With at most millions of live entries out of 2^32 values, a retry is rare and a
//! long run of them practically impossible, so the loop needs no bound of its own.
//!
//! The map is a `HashMap` with the standard randomly keyed hasher. The keys are drawn from a
//! CSPRNG, and lookups with attacker-chosen indices only read, so nobody can steer entries into
//! one bucket.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::rng::Rng;

/// Values (handshakes or keypairs) by the random index a peer uses to address them.
#[derive(Debug)]
pub struct IndexTable<T> {
    entries: HashMap<u32, T>,
}

impl<T> IndexTable<T> {
    pub fn new() -> Self {
        IndexTable {
            entries: HashMap::new(),
        }
    }

    /// A fresh random 32-bit index not currently in use, mapped to `value`. Never returns an
    /// index that is live. (Loop on collision; the table is far smaller than 2^32.)
    pub fn insert(&mut self, rng: &mut dyn Rng, value: T) -> u32 {
        loop {
            let index = rng.next_u32();
            if let Entry::Vacant(slot) = self.entries.entry(index) {
                slot.insert(value);
                return index;
            }
        }
    }

    pub fn get(&self, index: u32) -> Option<&T> {
        self.entries.get(&index)
    }

    pub fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.entries.get_mut(&index)
    }

    pub fn remove(&mut self, index: u32) -> Option<T> {
        self.entries.remove(&index)
    }

    pub fn contains(&self, index: u32) -> bool {
        self.entries.contains_key(&index)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// Written out because a derive would demand `T: Default`, which an empty table doesn't need.
impl<T> Default for IndexTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::SeededRng;
    use std::collections::HashSet;

    /// An adversarial source: yields `script` word by word, then falls back to a seeded stream.
    /// Counts the words drawn so tests can see retries happen.
    struct ScriptedRng {
        script: Vec<u32>,
        drawn: usize,
        rest: SeededRng,
    }

    impl ScriptedRng {
        fn new(script: Vec<u32>) -> Self {
            ScriptedRng {
                script,
                drawn: 0,
                rest: SeededRng::new(99),
            }
        }
    }

    impl Rng for ScriptedRng {
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(4) {
                let word = match self.script.get(self.drawn) {
                    Some(&w) => w,
                    None => self.rest.next_u32(),
                };
                self.drawn += 1;
                chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
            }
        }
    }

    /// Only ever yields values below `range`, so collisions are constant.
    struct NarrowRng {
        inner: SeededRng,
        range: u32,
    }

    impl Rng for NarrowRng {
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(4) {
                let word = self.inner.next_u32() % self.range;
                chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
            }
        }
    }

    #[test]
    fn insert_get_remove() {
        let mut rng = SeededRng::new(1);
        let mut table = IndexTable::new();
        assert!(table.is_empty());
        let a = table.insert(&mut rng, "a");
        let b = table.insert(&mut rng, "b");
        assert_ne!(a, b);
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(a), Some(&"a"));
        assert_eq!(table.get(b), Some(&"b"));
        assert!(table.contains(a));
        if let Some(v) = table.get_mut(a) {
            *v = "A";
        }
        assert_eq!(table.get(a), Some(&"A"));
        assert_eq!(table.remove(a), Some("A"));
        assert_eq!(table.remove(a), None);
        assert!(!table.contains(a));
        assert_eq!(table.get(a), None);
        assert_eq!(table.get_mut(a), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove(b), Some("b"));
        assert!(table.is_empty());
    }

    #[test]
    fn lookups_of_unknown_indices_miss() {
        let mut rng = SeededRng::new(2);
        let mut table = IndexTable::new();
        let live = table.insert(&mut rng, ());
        for probe in [0, 1, u32::MAX, live.wrapping_add(1), live.wrapping_sub(1)] {
            assert_eq!(table.get(probe).is_some(), probe == live);
        }
        let empty: IndexTable<()> = IndexTable::default();
        assert!(empty.is_empty());
        assert!(!empty.contains(live));
    }

    #[test]
    fn repeated_random_values_are_retried() {
        // The source repeats 7 many times, then 9, then 7 and 9 again before anything new.
        let mut script = vec![7; 5];
        script.extend([9; 3]);
        script.extend([7, 9, 7, 9, 7, 9, 11]);
        let mut rng = ScriptedRng::new(script);
        let mut table = IndexTable::new();
        assert_eq!(table.insert(&mut rng, 'a'), 7);
        assert_eq!(rng.drawn, 1);
        // Four more 7s are refused before the 9.
        assert_eq!(table.insert(&mut rng, 'b'), 9);
        assert_eq!(rng.drawn, 6);
        // The remaining 9s, and the alternating 7s and 9s, are all live.
        assert_eq!(table.insert(&mut rng, 'c'), 11);
        assert_eq!(rng.drawn, 15);
        assert_eq!(table.get(7), Some(&'a'));
        assert_eq!(table.get(9), Some(&'b'));
        assert_eq!(table.get(11), Some(&'c'));
    }

    #[test]
    fn stuck_source_is_retried_until_it_moves() {
        let mut rng = ScriptedRng::new(vec![42; 1_000]);
        let mut table = IndexTable::new();
        assert_eq!(table.insert(&mut rng, 0), 42);
        let second = table.insert(&mut rng, 1);
        assert_ne!(second, 42);
        assert_eq!(rng.drawn, 1_001);
        assert_eq!(table.get(42), Some(&0));
        assert_eq!(table.get(second), Some(&1));
    }

    #[test]
    fn removed_indices_come_back_but_never_while_live() {
        // With only 16 possible values, filling the table must yield each exactly once, and a
        // freed index is the only one left to hand out again.
        let mut rng = NarrowRng {
            inner: SeededRng::new(3),
            range: 16,
        };
        let mut table = IndexTable::new();
        let mut indices: Vec<u32> = (0..16).map(|i| table.insert(&mut rng, i)).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..16).collect::<Vec<u32>>());
        for freed in [3, 0, 15] {
            let value = table.remove(freed);
            assert!(value.is_some());
            assert_eq!(table.insert(&mut rng, 100 + freed), freed);
            assert_eq!(table.get(freed), Some(&(100 + freed)));
            assert_eq!(table.len(), 16);
        }
    }

    #[test]
    fn random_churn_keeps_live_indices_unique() {
        let mut rng = NarrowRng {
            inner: SeededRng::new(4),
            range: 64,
        };
        let mut picker = SeededRng::new(5);
        let mut table = IndexTable::new();
        let mut live: HashSet<u32> = HashSet::new();
        for step in 0..20_000u32 {
            if live.len() < 48 && picker.below(2) == 0 {
                let index = table.insert(&mut rng, step);
                assert!(
                    live.insert(index),
                    "step {step}: live index {index} reissued"
                );
                assert_eq!(table.get(index), Some(&step));
            } else if let Some(&index) = live.iter().next() {
                live.remove(&index);
                assert!(table.remove(index).is_some(), "step {step}: {index} lost");
                assert!(!table.contains(index));
            }
            assert_eq!(table.len(), live.len());
        }
    }
}
