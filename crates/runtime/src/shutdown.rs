//! How a controller stops: gracefully (SIGTERM) or at once (leadership lost).
//!
//! Both start the same way: the queue hands out no more keys and the watches stop.
//! Then:
//!
//! | signal     | in-flight reconciles                                             | [`StopReason`]     |
//! |------------|------------------------------------------------------------------|--------------------|
//! | `graceful` | may finish, for at most `drain_timeout`; then they are cut off   | `Drained` / `DrainTimedOut` |
//! | `abort`    | cut off at once (also while a graceful drain is under way)       | `Aborted`          |
//!
//! "Cut off" means the reconcile's future is dropped at its next await point; the number
//! cut off is logged at warn and returned in [`Stopped`]. Aborting is what a replica that
//! lost its leader lease must do: another replica may already be reconciling the same
//! objects, so nothing may be written on a stale belief, not even to finish a step.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// controller-runtime's default `GracefulShutdownTimeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

type Signal = Shared<BoxFuture<'static, ()>>;

/// The stop signals of one or more controllers; clones share the signals.
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) graceful: Signal,
    pub(crate) abort: Signal,
    pub(crate) drain_timeout: Duration,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("graceful", &self.graceful.peek().is_some())
            .field("abort", &self.abort.peek().is_some())
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Shutdown {
    /// Stop gracefully when `graceful` completes (draining for at most
    /// [`DEFAULT_DRAIN_TIMEOUT`]); never abort.
    pub fn new(graceful: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            graceful: graceful.boxed().shared(),
            abort: std::future::pending().boxed().shared(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// Also stop at once, cutting in-flight reconciles off, when `abort` completes.
    pub fn abort_on(mut self, abort: impl Future<Output = ()> + Send + 'static) -> Self {
        self.abort = abort.boxed().shared();
        self
    }

    /// How long a graceful stop waits for in-flight reconciles.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// How a controller's [`run`](crate::Controller::run) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Why.
    pub reason: StopReason,
    /// How many in-flight reconciles were cut off.
    pub cut_off: usize,
}

/// Why a controller stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Graceful: every in-flight reconcile finished within the drain timeout.
    Drained,
    /// Graceful, but the drain timeout passed first.
    DrainTimedOut,
    /// The abort signal.
    Aborted,
}
