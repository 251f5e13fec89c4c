//! The resourceVersion of each object's last status write by its controller, and the
//! status writes in flight.
//!
//! Three uses: a watch event carrying exactly that version is the controller's own write
//! and needs no reconcile; a watch event that arrives while a status write of the object
//! is in flight (the watch can be quicker than the write's response) and shows exactly
//! the object the write produces is that write, too; and a cached object older than the
//! last write is stale (the watch has not delivered the write yet), so the reconcile
//! reads the object fresh instead of deciding on the old status — or, for a controller
//! that would rather wait than read ([`WrittenVersions::await_cache`]), lets the watch
//! event of that write reconcile the object once it arrives. resourceVersions are
//! compared as numbers — they are etcd revisions on every API server this runs on; one
//! that is not a number is never trusted and leads to a GET.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use serde::Serialize;
use serde_json::Value;

/// The last status write's resourceVersion per object (see the module doc).
#[derive(Debug)]
pub struct WrittenVersions<K: Resource<DynamicType = ()>>(Arc<Mutex<State<K>>>);

#[derive(Debug)]
struct State<K: Resource<DynamicType = ()>> {
    versions: HashMap<ObjectRef<K>, u64>,
    /// What each in-flight status write will make the object look like, by
    /// [`fingerprint`].
    in_flight: HashMap<ObjectRef<K>, Vec<Value>>,
    /// Objects whose cached copy a reconcile found older than the last write, with when
    /// it first did: the watch event of that write is what they wait for, so it is not
    /// ignored as the controller's own.
    awaited: HashMap<ObjectRef<K>, Instant>,
}

impl<K: Resource<DynamicType = ()>> Default for State<K> {
    fn default() -> Self {
        Self {
            versions: HashMap::new(),
            in_flight: HashMap::new(),
            awaited: HashMap::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Clone for WrittenVersions<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K: Resource<DynamicType = ()>> Default for WrittenVersions<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

/// `metadata.resourceVersion` as a number, when it is one.
pub(crate) fn version_of<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

/// Everything of `obj` a reconcile reads or a status write changes: generation, labels,
/// annotations, deletion timestamp, finalizers and the status. Two states with the same
/// fingerprint reconcile the same.
fn fingerprint<K: Resource + Serialize>(obj: &K) -> Option<Value> {
    let meta = obj.meta();
    let status = serde_json::to_value(obj).ok()?.get("status").cloned();
    Some(serde_json::json!({
        "generation": meta.generation,
        "labels": meta.labels,
        "annotations": meta.annotations,
        "deletionTimestamp": meta.deletion_timestamp,
        "finalizers": meta.finalizers,
        "status": status,
    }))
}

/// A status write in flight; see [`WrittenVersions::begin`].
pub(crate) struct InFlight<K: Resource<DynamicType = ()>> {
    written: WrittenVersions<K>,
    key: ObjectRef<K>,
    fingerprint: Option<Value>,
}

impl<K: Resource<DynamicType = ()>> Drop for InFlight<K> {
    fn drop(&mut self) {
        let Some(fingerprint) = self.fingerprint.take() else {
            return;
        };
        let mut state = self.written.lock();
        if let Some(pending) = state.in_flight.get_mut(&self.key) {
            if let Some(i) = pending.iter().position(|p| *p == fingerprint) {
                pending.swap_remove(i);
            }
            if pending.is_empty() {
                state.in_flight.remove(&self.key);
            }
        }
    }
}

impl<K: Resource<DynamicType = ()>> WrittenVersions<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Resource<DynamicType = ()> + Serialize> WrittenVersions<K> {
    /// A status write is about to turn the object into `expected` (the object it was
    /// planned on, with the new status); until the guard drops, a watch event showing
    /// exactly that is recognised as the write.
    pub(crate) fn begin(&self, expected: &K) -> InFlight<K> {
        let key = ObjectRef::from_obj(expected);
        let fingerprint = fingerprint(expected);
        if let Some(fp) = &fingerprint {
            self.lock()
                .in_flight
                .entry(key.clone())
                .or_default()
                .push(fp.clone());
        }
        InFlight {
            written: self.clone(),
            key,
            fingerprint,
        }
    }

    pub(crate) fn record(&self, obj: &K) {
        if let Some(rv) = version_of(obj) {
            self.lock().versions.insert(ObjectRef::from_obj(obj), rv);
        }
    }

    pub(crate) fn forget(&self, key: &ObjectRef<K>) {
        let mut state = self.lock();
        state.versions.remove(key);
        state.awaited.remove(key);
    }

    /// The cached `obj` is older than the last write and the reconcile waits for the
    /// watch instead of reading it: until [`caught_up`](Self::caught_up), the object's
    /// watch events (its own write's included) reconcile it. Returns how long reconciles
    /// of it have been waiting.
    pub(crate) fn await_cache(&self, obj: &K) -> Duration {
        let now = Instant::now();
        let since = *self
            .lock()
            .awaited
            .entry(ObjectRef::from_obj(obj))
            .or_insert(now);
        now.saturating_duration_since(since)
    }

    /// A reconcile decides on a current copy of the object: its own writes' watch events
    /// are ignored again.
    pub(crate) fn caught_up(&self, key: &ObjectRef<K>) {
        self.lock().awaited.remove(key);
    }

    /// The watch event of `obj` is the controller's own status write: the last one's
    /// resourceVersion, or the object an in-flight write produces — unless a reconcile
    /// waits for that write to reach the cache ([`await_cache`](Self::await_cache)).
    pub fn is_own_write(&self, obj: &K) -> bool {
        let key = ObjectRef::from_obj(obj);
        let state = self.lock();
        if state.awaited.contains_key(&key) {
            return false;
        }
        let written = state.versions.get(&key).copied();
        if written.is_some() && written == version_of(obj) {
            return true;
        }
        let Some(pending) = state.in_flight.get(&key) else {
            return false;
        };
        fingerprint(obj).is_some_and(|fp| pending.contains(&fp))
    }

    /// The cached `obj` already includes the controller's last status write (or there
    /// was none since the operator started: the initial list is fresh).
    pub(crate) fn is_current(&self, obj: &K) -> bool {
        match self.lock().versions.get(&ObjectRef::from_obj(obj)) {
            None => true,
            Some(written) => version_of(obj).is_some_and(|rv| rv >= *written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;

    /// A namespace standing in for any object with a status.
    fn object(rv: &str, phase: &str) -> Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "a", "resourceVersion": rv, "generation": 1 },
            "status": { "phase": phase },
        }))
        .expect("valid object")
    }

    #[test]
    fn an_event_is_own_by_its_version_or_while_its_write_is_in_flight() {
        let written = WrittenVersions::<Namespace>::default();
        let expected = object("", "new");
        let guard = written.begin(&expected);
        // The watch is quicker than the response: the event shows what the write makes.
        assert!(written.is_own_write(&object("7", "new")));
        assert!(
            !written.is_own_write(&object("7", "other")),
            "someone else's change"
        );
        written.record(&object("7", "new"));
        drop(guard);
        assert!(written.is_own_write(&object("7", "new")));
        assert!(
            !written.is_own_write(&object("8", "new")),
            "a later event is not the write, whatever it shows"
        );
        assert!(written.is_current(&object("7", "x")));
        assert!(!written.is_current(&object("6", "x")));
    }

    #[test]
    fn an_awaited_write_is_not_ignored_until_the_cache_caught_up() {
        let written = WrittenVersions::<Namespace>::default();
        written.record(&object("7", "new"));
        let stale = object("6", "old");
        assert!(!written.is_current(&stale));
        let first = written.await_cache(&stale);
        assert!(
            !written.is_own_write(&object("7", "new")),
            "the write's event is what the reconcile waits for"
        );
        assert!(
            written.await_cache(&stale) >= first,
            "the wait is counted from the first reconcile that began it"
        );
        written.caught_up(&ObjectRef::from_obj(&stale));
        assert!(written.is_own_write(&object("7", "new")));
        written.await_cache(&stale);
        written.forget(&ObjectRef::from_obj(&stale));
        written.record(&object("9", "newer"));
        assert!(
            written.is_own_write(&object("9", "newer")),
            "forgetting the object ends its wait"
        );
    }
}
