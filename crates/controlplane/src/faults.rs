//! Fault switches and request counters, for tests of the agent: the server itself
//! misbehaves on request, so a test needs no proxy between the agent and the server.
//!
//! Invariants:
//! * faults apply to the agent endpoints only (`/api/agent/...`), before
//!   authentication, in the order they were set; `delay` faults add up and the first
//!   `status` or `refuse` fault decides the answer;
//! * a fault with a `count` applies to that many matching requests and is then gone;
//!   one without applies until cleared;
//! * every request is counted once, under its route (not its concrete path: job ids are
//!   folded into `{id}`) and the status it got, or `refused`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which agent endpoints a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathClass {
    /// `POST /api/agent/events`.
    Events,
    /// `GET /api/agent/jobs` and `POST /api/agent/jobs/{id}/status`.
    Jobs,
    /// `POST /api/agent/heartbeat`.
    Heartbeat,
    /// Every `/api/agent/...` path.
    All,
}

impl PathClass {
    /// The class of an agent path, `None` for anything else.
    pub fn of(path: &str) -> Option<PathClass> {
        let rest = path.strip_prefix("/api/agent/")?;
        Some(if rest == "events" {
            PathClass::Events
        } else if rest == "jobs" || rest.starts_with("jobs/") {
            PathClass::Jobs
        } else if rest == "heartbeat" {
            PathClass::Heartbeat
        } else {
            PathClass::All
        })
    }

    fn matches(self, request: PathClass) -> bool {
        self == PathClass::All || self == request
    }
}

/// One fault, as `POST /admin/faults` takes it. Exactly one of `status`, `refuse` and
/// `delay_ms` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The endpoints it applies to.
    pub path: PathClass,
    /// Answer this status (400-599) with an [`ApiError`](vworkspace_api::agent_api::ApiError).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// With `status`: the `Retry-After` seconds to send (429 sends 1 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    /// Close the connection without an answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refuse: bool,
    /// Wait this long before handling the request normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Apply to the next `count` matching requests only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

impl FaultSpec {
    /// Checks that the spec says one thing.
    pub fn validate(&self) -> Result<(), String> {
        let set = usize::from(self.status.is_some())
            + usize::from(self.refuse)
            + usize::from(self.delay_ms.is_some());
        if set != 1 {
            return Err("set exactly one of status, refuse and delay_ms".into());
        }
        if let Some(status) = self.status
            && !(400..=599).contains(&status)
        {
            return Err(format!("status {status} is not an error status (400-599)"));
        }
        if self.retry_after.is_some() && self.status.is_none() {
            return Err("retry_after goes with status".into());
        }
        if self.count == Some(0) {
            return Err("count must be at least 1 (omit it for no limit)".into());
        }
        Ok(())
    }
}

/// What the faults decided for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Wait this long first.
    pub delay: Duration,
    /// Then answer this instead of handling the request.
    pub outcome: Option<Injected>,
}

/// An injected answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Answer this status, with `Retry-After` when given.
    Status {
        /// The status.
        status: u16,
        /// `Retry-After` seconds.
        retry_after: Option<u32>,
    },
    /// Drop the connection.
    Refuse,
}

/// The active faults and the request counters.
#[derive(Debug, Default)]
pub struct Faults {
    active: Mutex<Vec<FaultSpec>>,
    stats: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    in_flight: Mutex<BTreeMap<String, u64>>,
}

/// Counts a request as in flight until dropped (also when its connection is dropped
/// mid-request), so a test can see that an agent is waiting in a long-poll.
#[derive(Debug)]
pub struct InFlight<'a> {
    faults: &'a Faults,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self
            .faults
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Faults {
    /// Adds a (validated) fault after the existing ones.
    pub fn add(&self, spec: FaultSpec) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(spec);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The active faults, with their remaining counts.
    pub fn list(&self) -> Vec<FaultSpec> {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Decides what happens to a request on `path`, consuming counted faults.
    pub fn verdict(&self, path: &str) -> Verdict {
        let Some(class) = PathClass::of(path) else {
            return Verdict::default();
        };
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let mut verdict = Verdict::default();
        for fault in active.iter_mut() {
            if !fault.path.matches(class) {
                continue;
            }
            if let Some(count) = fault.count.as_mut() {
                *count = count.saturating_sub(1);
            }
            if let Some(ms) = fault.delay_ms {
                verdict.delay += Duration::from_millis(ms);
                continue;
            }
            verdict.outcome = Some(match fault.status {
                Some(status) => Injected::Status {
                    status,
                    retry_after: fault.retry_after,
                },
                None => Injected::Refuse,
            });
            break;
        }
        active.retain(|f| f.count != Some(0));
        verdict
    }

    /// Counts one request of `method` on `route`, answered `status` (or `refused`).
    pub fn count(&self, method: &str, route: &str, status: &str) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        *stats
            .entry(format!("{method} {route}"))
            .or_default()
            .entry(status.to_owned())
            .or_default() += 1;
    }

    /// Marks a request of `method` on `route` in flight for the guard's lifetime.
    pub fn begin(&self, method: &str, route: &str) -> InFlight<'_> {
        let key = format!("{method} {route}");
        *self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default() += 1;
        InFlight { faults: self, key }
    }

    /// Requests being handled now: `"METHOD route"` → count (absent when none).
    pub fn in_flight(&self) -> BTreeMap<String, u64> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests so far: `"METHOD route"` → status → count.
    pub fn stats(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the counters.
    pub fn reset_stats(&self) {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The route a path is counted under: agent job ids become `{id}`, org names `{org}`.
pub fn route_of(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("/api/agent/jobs/")
        && rest.ends_with("/status")
    {
        return "/api/agent/jobs/{id}/status".into();
    }
    if let Some(rest) = path.strip_prefix("/api/orgs/")
        && rest.ends_with("/timeline")
    {
        return "/api/orgs/{org}/timeline".into();
    }
    if let Some(rest) = path.strip_prefix("/orgs/")
        && rest.ends_with("/timeline")
    {
        return "/orgs/{org}/timeline".into();
    }
    path.to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn spec(json: &str) -> FaultSpec {
        let spec: FaultSpec = serde_json::from_str(json).unwrap();
        spec.validate().unwrap();
        spec
    }

    #[test]
    fn counted_faults_run_out_and_delays_add_up() {
        let faults = Faults::default();
        faults.add(spec(r#"{"path":"all","delay_ms":100}"#));
        faults.add(spec(r#"{"path":"events","status":503,"count":2}"#));
        faults.add(spec(r#"{"path":"jobs","refuse":true,"count":1}"#));
        let events = || faults.verdict("/api/agent/events");
        for _ in 0..2 {
            let v = events();
            assert_eq!(v.delay, Duration::from_millis(100));
            assert_eq!(
                v.outcome,
                Some(Injected::Status {
                    status: 503,
                    retry_after: None
                })
            );
        }
        assert_eq!(events().outcome, None, "count 2 is used up");
        assert_eq!(
            faults.verdict("/api/agent/jobs/job-1/status").outcome,
            Some(Injected::Refuse)
        );
        assert_eq!(faults.verdict("/api/agent/jobs").outcome, None);
        assert_eq!(faults.verdict("/admin/stats"), Verdict::default());
        assert_eq!(faults.list().len(), 1, "only the uncounted delay is left");
        faults.clear();
        assert_eq!(events(), Verdict::default());
    }

    #[test]
    fn specs_must_say_one_thing() {
        for bad in [
            r#"{"path":"all"}"#,
            r#"{"path":"all","status":503,"refuse":true}"#,
            r#"{"path":"all","status":200}"#,
            r#"{"path":"all","delay_ms":5,"retry_after":1}"#,
            r#"{"path":"all","refuse":true,"count":0}"#,
        ] {
            let spec: FaultSpec = serde_json::from_str(bad).unwrap();
            assert!(spec.validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<FaultSpec>(r#"{"path":"nope","refuse":true}"#).is_err());
    }

    #[test]
    fn routes_fold_ids() {
        assert_eq!(
            route_of("/api/agent/jobs/j-9/status"),
            "/api/agent/jobs/{id}/status"
        );
        assert_eq!(route_of("/api/orgs/a/timeline"), "/api/orgs/{org}/timeline");
        assert_eq!(route_of("/api/agent/events"), "/api/agent/events");
    }
}
