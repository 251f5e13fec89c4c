//! Decoding watched objects one at a time, so that one object the operator cannot decode
//! never fails a list or a watch.
//!
//! kube's client parses a whole list response (and each watch event) with serde_json,
//! whose recursion limit (128 levels) and type checks apply to the document as a whole:
//! one object nested deeper than that, or with a field of the wrong type, fails the list,
//! the watcher retries the same list forever and no cache ever syncs. The watches of this
//! crate therefore list and watch [`Decoded<K>`]: each item is first taken as raw JSON
//! text (which serde_json skips over without a depth limit), then decoded on its own.
//! An item that does not decode is kept as [`Undecodable`] — its name, namespace, uid and
//! resourceVersion, read from the raw text while everything else is skipped — so the
//! watcher can still follow resourceVersions, and the caches leave it out.
//!
//! The depth limit is serde_json's, counted from the object's root (so `spec.values` may
//! nest about 120 levels); real chart values nest a dozen or so.
//!
//! Skipped objects are reported by [`report`]: one warn line naming kind, namespace, name
//! and the cause, and one count in `vworkspace_operator_undecodable_objects_total{kind}`,
//! once per object version per process, however often the object is listed again.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::DynamicResourceScope;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tracing::warn;

use crate::status::KindName;

/// A watched object as listed or watched: decoded, or why not.
#[derive(Debug, Clone)]
pub struct Decoded<K>(pub Result<K, Undecodable>);

/// An object that could not be decoded: enough of its metadata to name it, and the cause.
#[derive(Debug, Clone)]
pub struct Undecodable {
    /// Name, namespace, uid, resourceVersion and generation (nothing else is read).
    pub metadata: ObjectMeta,
    /// serde_json's error, e.g. "recursion limit exceeded at line 1 column 4711".
    pub error: String,
}

/// The metadata fields read from an object that does not decode as a whole. Everything
/// else (including `managedFields`, which mirror a deep spec) is skipped unparsed.
#[derive(Deserialize)]
struct Names {
    #[serde(default)]
    metadata: NamesMeta,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NamesMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Self(decode(raw.get()).map_err(D::Error::custom)?))
    }
}

/// Decode one object's JSON text; `Err` only when not even its names can be read.
fn decode<K: DeserializeOwned>(text: &str) -> Result<Result<K, Undecodable>, serde_json::Error> {
    match serde_json::from_str::<K>(text) {
        Ok(obj) => Ok(Ok(obj)),
        Err(error) => {
            let Names { metadata: m } = serde_json::from_str(text)?;
            Ok(Err(Undecodable {
                metadata: ObjectMeta {
                    name: m.name,
                    namespace: m.namespace,
                    uid: m.uid,
                    resource_version: m.resource_version,
                    generation: m.generation,
                    ..ObjectMeta::default()
                },
                error: without_quoted(&error.to_string()),
            }))
        }
    }
}

/// serde's messages quote the offending value (`invalid type: string "…"`); the cause
/// goes to logs and Events, where a value from a spec has no place.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

impl<K: Resource<DynamicType = ()>> Resource for Decoded<K> {
    type DynamicType = ();
    // Dynamic, so that an `Api<Decoded<K>>` can be narrowed to the namespace of the
    // `Api<K>` it mirrors whatever `K`'s scope.
    type Scope = DynamicResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match &self.0 {
            Ok(obj) => obj.meta(),
            Err(bad) => &bad.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match &mut self.0 {
            Ok(obj) => obj.meta_mut(),
            Err(bad) => &mut bad.metadata,
        }
    }
}

/// The `Api<Decoded<K>>` listing and watching what `api` would.
pub(crate) fn api_of<K: Resource<DynamicType = ()> + Clone>(
    api: &kube::Api<K>,
) -> kube::Api<Decoded<K>> {
    let client = api.clone().into_client();
    let all = kube::Api::<Decoded<K>>::all_with(client, &());
    match api.namespace() {
        Some(ns) => all.constrain(ns),
        None => all,
    }
}

/// Told about each object a controller's primary watch skipped, the first time that
/// watch meets that version of it (the controller puts a Warning Event on it).
pub type SkipHook = Arc<dyn Fn(&KindName, &Undecodable) + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// `vworkspace_operator_undecodable_objects_total{kind}` (not in the specification).
fn counter() -> &'static Family<KindLabels, Counter> {
    static COUNTER: OnceLock<Family<KindLabels, Counter>> = OnceLock::new();
    COUNTER.get_or_init(Family::default)
}

/// Register `vworkspace_operator_undecodable_objects_total` in `registry` (done by
/// [`RuntimeMetrics::register`](crate::RuntimeMetrics::register)).
pub(crate) fn register(registry: &mut prometheus_client::registry::Registry) {
    registry.register(
        "vworkspace_operator_undecodable_objects",
        "Watched objects skipped because they could not be decoded, per kind, once per object version",
        counter().clone(),
    );
}

/// Object versions already reported by this process: (kind, uid, resourceVersion).
fn seen() -> &'static Mutex<HashSet<(String, String, String)>> {
    static SEEN: OnceLock<Mutex<HashSet<(String, String, String)>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

/// Longest cause a log line carries.
const MAX_CAUSE: usize = 300;

/// Report a skipped object: logged and counted once per object version per process.
/// Returns whether this was the first report.
pub(crate) fn report(kind: &KindName, bad: &Undecodable) -> bool {
    let m = &bad.metadata;
    let key = (
        kind.crd_name(),
        m.uid.clone().unwrap_or_default(),
        m.resource_version.clone().unwrap_or_default(),
    );
    let first = seen()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key);
    if first {
        counter()
            .get_or_create(&KindLabels {
                kind: kind.kind.clone(),
            })
            .inc();
        let cause = bad
            .error
            .get(..bad.error.floor_char_boundary(MAX_CAUSE))
            .unwrap_or(&bad.error);
        warn!(
            kind = %kind,
            object_namespace = m.namespace.as_deref().unwrap_or_default(),
            object_name = m.name.as_deref().unwrap_or_default(),
            cause,
            "skipping an object that cannot be decoded; it is left out of the cache until it is fixed"
        );
    }
    first
}

impl fmt::Display for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot be decoded: {}", self.error)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::core::ObjectList;

    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn a_too_deep_item_is_skipped_and_the_others_decode() {
        let list = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMapList","metadata":{{"resourceVersion":"7"}},"items":[
              {{"metadata":{{"name":"good","namespace":"a","uid":"u1","resourceVersion":"5"}},"data":{{"k":"v"}}}},
              {{"metadata":{{"name":"deep","namespace":"a","uid":"u2","resourceVersion":"6",
                 "managedFields":[{{"fieldsV1":{deep}}}]}},"data":{{"k":"v"}},"extra":{deep}}},
              {{"metadata":{{"name":"typed","namespace":"a","uid":"u3","resourceVersion":"4"}},"data":{{"k":1}}}}
            ]}}"#,
            deep = nested(200)
        );
        let list: ObjectList<Decoded<ConfigMap>> = serde_json::from_str(&list).unwrap();
        let items: Vec<_> = list.items.iter().map(|d| d.0.as_ref()).collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].unwrap().metadata.name.as_deref(), Some("good"));
        let deep = items[1].unwrap_err();
        assert_eq!(deep.metadata.name.as_deref(), Some("deep"));
        assert_eq!(deep.metadata.uid.as_deref(), Some("u2"));
        assert_eq!(deep.metadata.resource_version.as_deref(), Some("6"));
        assert!(deep.error.contains("recursion limit"), "{}", deep.error);
        let typed = items[2].unwrap_err();
        assert!(typed.error.contains("invalid type"), "{}", typed.error);
        assert_eq!(
            without_quoted(r#"invalid type: string "s3cr3t", expected u8"#),
            r#"invalid type: string "…", expected u8"#
        );
        assert_eq!(list.items[1].meta().name.as_deref(), Some("deep"));
    }

    #[test]
    fn a_watch_event_with_a_too_deep_object_decodes_as_undecodable() {
        let line = format!(
            r#"{{"type":"MODIFIED","object":{{"metadata":{{"name":"deep","namespace":"a","uid":"u9","resourceVersion":"9","managedFields":[{{"fieldsV1":{}}}]}},"data":{{}}}}}}"#,
            nested(300)
        );
        let event: kube::core::WatchEvent<Decoded<ConfigMap>> =
            serde_json::from_str(&line).unwrap();
        let kube::core::WatchEvent::Modified(Decoded(Err(bad))) = event else {
            panic!("not an undecodable MODIFIED event");
        };
        assert_eq!(bad.metadata.name.as_deref(), Some("deep"));
    }

    #[test]
    fn each_object_version_is_reported_once() {
        let kind = KindName::of::<ConfigMap>();
        let bad = Undecodable {
            metadata: ObjectMeta {
                name: Some("x".into()),
                uid: Some("report-once".into()),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            error: "recursion limit exceeded".into(),
        };
        assert!(report(&kind, &bad));
        assert!(!report(&kind, &bad), "a relist reports nothing again");
        let mut newer = bad.clone();
        newer.metadata.resource_version = Some("2".into());
        assert!(report(&kind, &newer), "a new version is a new report");
    }
}
