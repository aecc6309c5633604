//! A family: its series by label set, behind one lock that only a new label
//! set or a scrape takes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub(super) type Family<K, V> = Mutex<HashMap<K, Arc<V>>>;

/// The series for `key`, made on first use.
pub(super) fn series<K: Hash + Eq + Clone, V: Default>(family: &Family<K, V>, key: &K) -> Arc<V> {
    series_with_key(family, key, K::clone).1
}

/// The series for `key` and the map's own copy of the key. A new key is
/// stored as `own(key)`, so that a key borrowing a request's memory is not kept.
pub(super) fn series_with_key<K: Hash + Eq + Clone, V: Default>(
    family: &Family<K, V>,
    key: &K,
    own: impl FnOnce(&K) -> K,
) -> (K, Arc<V>) {
    let mut map = family.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((stored, v)) = map.get_key_value(key) {
        return (stored.clone(), v.clone());
    }
    let stored = own(key);
    let v = Arc::<V>::default();
    map.insert(stored.clone(), v.clone());
    (stored, v)
}

/// Every series as it is now; the lock is held only while copying the map.
pub(super) fn snapshot<K: Clone, V>(family: &Family<K, V>) -> Vec<(K, Arc<V>)> {
    let map = family.lock().unwrap_or_else(|p| p.into_inner());
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
