//! The resourceVersion of each object's last status write by its controller.
//!
//! Two uses: a watch event carrying exactly that version is the controller's own write
//! and needs no reconcile; and a cached object older than it is stale (the watch has not
//! delivered the write yet), so the reconcile reads the object fresh instead of deciding
//! on the old status. resourceVersions are compared as numbers — they are etcd revisions
//! on every API server this runs on; one that is not a number is never trusted and
//! leads to a GET.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

/// The last status write's resourceVersion per object (see the module doc).
#[derive(Debug)]
pub struct WrittenVersions<K: Resource<DynamicType = ()>>(Arc<Mutex<HashMap<ObjectRef<K>, u64>>>);

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

impl<K: Resource<DynamicType = ()>> WrittenVersions<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<K>, u64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, obj: &K) {
        if let Some(rv) = version_of(obj) {
            self.lock().insert(ObjectRef::from_obj(obj), rv);
        }
    }

    pub(crate) fn forget(&self, key: &ObjectRef<K>) {
        self.lock().remove(key);
    }

    /// The watch event of `obj` is the controller's own last status write.
    pub fn is_own_write(&self, obj: &K) -> bool {
        let written = self.lock().get(&ObjectRef::from_obj(obj)).copied();
        written.is_some() && written == version_of(obj)
    }

    /// The cached `obj` already includes the controller's last status write (or there
    /// was none since the operator started: the initial list is fresh).
    pub(crate) fn is_current(&self, obj: &K) -> bool {
        match self.lock().get(&ObjectRef::from_obj(obj)) {
            None => true,
            Some(written) => version_of(obj).is_some_and(|rv| rv >= *written),
        }
    }
}
