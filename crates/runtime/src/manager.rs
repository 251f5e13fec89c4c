//! Several controllers in one process, run together under one [`Shutdown`].
//!
//! A [`Manager`] is a list of ready-to-run controllers (each with its reconcile function
//! and context) and the [`Readiness`] list they are entered in. [`Manager::run`] starts
//! every controller on its own task and returns when all have stopped; the
//! [`SharedWatch`](crate::SharedWatch)es they subscribe to start with the first of them
//! and stop with the last.
//!
//! Invariants:
//! * controller names are unique within a manager (they label the metrics);
//! * every controller added is in [`Manager::readiness`] from the moment it is added;
//! * one signal stops them all: graceful drains each within the same drain timeout,
//!   abort cuts every one off at once.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::error;

use crate::controller::{Action, Controller, ErrorCategory, Event, WatchedKind};
use crate::shutdown::{Shutdown, Stopped};
use crate::status::Readiness;

type Runner = Box<dyn FnOnce(Shutdown) -> BoxFuture<'static, Stopped> + Send>;

/// Controllers to run together.
#[derive(Default)]
pub struct Manager {
    readiness: Readiness,
    controllers: Vec<(String, Runner)>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field(
                "controllers",
                &self.controllers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Manager {
    /// No controllers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `controller`, to be run with `reconcile` and `ctx`, and enter it in the
    /// readiness list.
    ///
    /// # Panics
    /// If a controller of the same name was added already (a programming error: their
    /// metric series would merge).
    pub fn add<K, Ctx, F, Fut, E>(
        &mut self,
        controller: Controller<K>,
        reconcile: F,
        ctx: Arc<Ctx>,
    ) -> &mut Self
    where
        K: WatchedKind,
        Ctx: Send + Sync + 'static,
        F: Fn(Event<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: std::error::Error + ErrorCategory + Send + 'static,
    {
        let name = controller.name().to_owned();
        assert!(
            self.controllers.iter().all(|(n, _)| *n != name),
            "two controllers named {name}"
        );
        self.readiness.add(controller.status());
        self.controllers.push((
            name,
            Box::new(move |shutdown| controller.run(reconcile, ctx, shutdown).boxed()),
        ));
        self
    }

    /// Every controller added, for `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Run every controller until `shutdown` stops them; returns how each stopped, in the
    /// order they were added.
    pub async fn run(self, shutdown: Shutdown) -> Vec<(String, Stopped)> {
        let running: Vec<_> = self
            .controllers
            .into_iter()
            .map(|(name, run)| (name, tokio::spawn(run(shutdown.clone()))))
            .collect();
        let mut stopped = Vec::with_capacity(running.len());
        for (name, task) in running {
            match task.await {
                Ok(result) => stopped.push((name, result)),
                // A controller's run does not panic (reconciles are caught); if it ever
                // does, the others keep stopping normally.
                Err(err) => error!(controller = %name, error = %err, "controller task failed"),
            }
        }
        stopped
    }
}
