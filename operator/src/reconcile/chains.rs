//! Values grouped by entry key, laid out densely: the values sit in one slab, each with
//! its key digest and the slot of the next value with the same key, and the index by
//! key holds the 4-byte slot of each key's first value, hashed from that slot's key.
//!
//! The desired state (claims per key) and the mirror (server entries per key) each hold
//! one value per entry at 30000+ entries, and a key almost always has exactly one: a
//! `HashMap<KeyId, Vec<_>>` spent a 16-byte key and a vector header per bucket (in a
//! table sized to the next power of two) and a heap allocation per key.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::state::{KeyId, KeyIdHashing};

/// No slot: the end of a chain.
const NONE: u32 = u32::MAX;

/// A value and its place among the values with the same key.
#[derive(Debug)]
struct Link<T> {
    value: T,
    key: KeyId,
    next: u32,
}

/// Values by key, in the order each key's values were placed.
#[derive(Debug)]
pub struct Chains<T> {
    /// A removed value leaves its slot empty for the next insert.
    slots: Vec<Option<Link<T>>>,
    free: Vec<u32>,
    heads: HashTable<u32>,
}

impl<T> Default for Chains<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            heads: HashTable::new(),
        }
    }
}

impl<T> Chains<T> {
    /// Makes room for `additional` more values at once (growing step by step holds the
    /// index twice while it is copied).
    pub fn reserve(&mut self, additional: usize) {
        let new = additional.saturating_sub(self.free.len());
        self.slots.reserve(new);
        let slots = &self.slots;
        self.heads.reserve(new, |&at| key_hash(key_in(slots, at)));
    }

    /// Places `value` with `key` before the first of the key's values for which
    /// `before` holds, or last. Returns its slot.
    pub fn insert(&mut self, key: KeyId, value: T, before: impl Fn(&T) -> bool) -> u32 {
        let link = Some(Link {
            value,
            key,
            next: NONE,
        });
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = link;
                at
            }
            None => {
                self.slots.push(link);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 values")
            }
        };
        let Some(head) = self.head(&key) else {
            let slots = &self.slots;
            self.heads
                .insert_unique(key_hash(Some(&key)), at, |&at| key_hash(key_in(slots, at)));
            return at;
        };
        if self.value(head).is_some_and(&before) {
            self.link_mut(at).expect("just placed").next = head;
            self.set_head(&key, Some(at));
            return at;
        }
        // After the last value that does not come after it.
        let mut previous = head;
        while let Some(link) = self.link(previous)
            && link.next != NONE
            && !self.value(link.next).is_some_and(&before)
        {
            previous = link.next;
        }
        let next = self.link(previous).map_or(NONE, |l| l.next);
        self.link_mut(at).expect("just placed").next = next;
        if let Some(link) = self.link_mut(previous) {
            link.next = at;
        }
        at
    }

    /// Takes the value in slot `at` out of its chain.
    pub fn remove(&mut self, at: u32) -> Option<T> {
        let (key, next) = self.link(at).map(|l| (l.key, l.next))?;
        let head = self.head(&key).unwrap_or(NONE);
        if head == at {
            self.set_head(&key, (next != NONE).then_some(next));
        } else {
            let mut previous = head;
            while let Some(link) = self.link_mut(previous) {
                if link.next == at {
                    link.next = next;
                    break;
                }
                previous = link.next;
            }
        }
        let link = self.slots[at as usize].take()?;
        self.free.push(at);
        Some(link.value)
    }

    /// The value in slot `at`.
    pub fn value(&self, at: u32) -> Option<&T> {
        self.link(at).map(|l| &l.value)
    }

    /// The value in slot `at`, to change (not its key).
    pub fn value_mut(&mut self, at: u32) -> Option<&mut T> {
        self.link_mut(at).map(|l| &mut l.value)
    }

    /// The key of the value in slot `at`.
    pub fn key(&self, at: u32) -> Option<&KeyId> {
        key_in(&self.slots, at)
    }

    /// The first value with `key`.
    pub fn first(&self, key: &KeyId) -> Option<&T> {
        self.head(key).and_then(|at| self.value(at))
    }

    /// The values with `key`, in order, with their slots.
    pub fn with_key(&self, key: &KeyId) -> impl Iterator<Item = (u32, &T)> {
        self.chain(self.head(key).unwrap_or(NONE))
    }

    /// Every key's first value, with its key.
    pub fn firsts(&self) -> impl Iterator<Item = (&KeyId, &T)> {
        self.heads
            .iter()
            .filter_map(|&at| self.link(at).map(|l| (&l.key, &l.value)))
    }

    /// Every value, each key's in order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.heads
            .iter()
            .flat_map(|&head| self.chain(head).map(|(_, value)| value))
    }

    /// Whether any value has `key`.
    pub fn contains_key(&self, key: &KeyId) -> bool {
        self.head(key).is_some()
    }

    /// How many keys have values.
    pub fn key_count(&self) -> usize {
        self.heads.len()
    }

    /// How many values there are.
    pub fn value_count(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// How many slots there are, in use or free (for tests of their reuse).
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    fn chain(&self, mut at: u32) -> impl Iterator<Item = (u32, &T)> {
        std::iter::from_fn(move || {
            let link = self.link(at)?;
            let here = at;
            at = link.next;
            Some((here, &link.value))
        })
    }

    fn head(&self, key: &KeyId) -> Option<u32> {
        let slots = &self.slots;
        self.heads
            .find(key_hash(Some(key)), |&at| key_in(slots, at) == Some(key))
            .copied()
    }

    /// Points `key`'s index entry at `at`, or removes it.
    fn set_head(&mut self, key: &KeyId, at: Option<u32>) {
        let slots = &self.slots;
        if let Ok(mut first) = self
            .heads
            .find_entry(key_hash(Some(key)), |&at| key_in(slots, at) == Some(key))
        {
            match at {
                Some(at) => *first.get_mut() = at,
                None => {
                    first.remove();
                }
            }
        }
    }

    fn link(&self, at: u32) -> Option<&Link<T>> {
        self.slots.get(at as usize)?.as_ref()
    }

    fn link_mut(&mut self, at: u32) -> Option<&mut Link<T>> {
        self.slots.get_mut(at as usize)?.as_mut()
    }
}

/// The key in slot `at` (`None` for an empty slot, which no index points to).
fn key_in<T>(slots: &[Option<Link<T>>], at: u32) -> Option<&KeyId> {
    slots
        .get(at as usize)
        .and_then(Option::as_ref)
        .map(|link| &link.key)
}

/// The hash of a key digest, as [`KeyIdHashing`] makes it.
fn key_hash(key: Option<&KeyId>) -> u64 {
    key.map_or(0, |key| KeyIdHashing.hash_one(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spire::EntryKey;

    fn key(n: u32) -> KeyId {
        KeyId::of(&EntryKey {
            spiffe_id: format!("spiffe://td/{n}").parse().unwrap(),
            parent_id: "spiffe://td/agent".parse().unwrap(),
            selectors: Default::default(),
        })
    }

    fn values(chains: &Chains<u32>, k: u32) -> Vec<u32> {
        chains.with_key(&key(k)).map(|(_, v)| *v).collect()
    }

    /// Values keep the order `before` gives them, wherever they are placed and whichever
    /// goes (first, middle, last); keys come and go with their values; slots are reused.
    #[test]
    fn values_stay_in_order_as_they_come_and_go() {
        let mut chains = Chains::default();
        let sorted = |chains: &mut Chains<u32>, v: u32| chains.insert(key(1), v, |e| *e > v);
        for v in [5, 1, 9, 3, 7] {
            sorted(&mut chains, v);
        }
        chains.insert(key(2), 100, |_| false);
        assert_eq!(values(&chains, 1), [1, 3, 5, 7, 9]);
        assert_eq!((chains.key_count(), chains.value_count()), (2, 6));
        assert_eq!(chains.first(&key(1)), Some(&1));
        assert_eq!(chains.values().count(), 6);
        let firsts: Vec<u32> = chains.firsts().map(|(_, v)| *v).collect();
        assert!(firsts.contains(&1) && firsts.contains(&100) && firsts.len() == 2);

        let slot_of = |chains: &Chains<u32>, v: u32| {
            chains.with_key(&key(1)).find(|(_, e)| **e == v).unwrap().0
        };
        for (gone, left) in [
            (1, vec![3, 5, 7, 9]),
            (5, vec![3, 7, 9]),
            (9, vec![3, 7]),
            (3, vec![7]),
            (7, vec![]),
        ] {
            let at = slot_of(&chains, gone);
            assert_eq!(chains.key(at), Some(&key(1)));
            assert_eq!(chains.remove(at), Some(gone));
            assert_eq!(chains.remove(at), None);
            assert_eq!(values(&chains, 1), left);
        }
        assert!(!chains.contains_key(&key(1)));
        assert_eq!((chains.key_count(), chains.value_count()), (1, 1));
        sorted(&mut chains, 4);
        *chains.value_mut(slot_of(&chains, 4)).unwrap() = 6;
        assert_eq!(values(&chains, 1), [6]);
        assert_eq!(chains.slots(), 6, "freed slots are reused");
    }
}
