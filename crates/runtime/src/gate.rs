//! A hold-back point: a reconcile awaits [`Gate::pass`] and the test decides when it may
//! continue. This makes states such as "N objects waiting behind one busy worker"
//! observable exactly, without sleeping and hoping.
//!
//! Invariants: every [`Gate::release`] lets exactly that many [`Gate::pass`] calls
//! through (now or later); after [`Gate::open`] every pass returns at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// A counting gate; clones share one gate.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::closed()
    }
}

impl Gate {
    /// A gate that lets nobody through until released or opened.
    pub fn closed() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Wait until this caller may pass. A caller that stops waiting (its future is
    /// dropped, e.g. a reconcile cut off by shutdown) no longer counts as waiting.
    pub async fn pass(&self) {
        let _waiting = Waiting::new(&self.waiting);
        // A closed semaphore is how an open gate is represented: acquiring fails at once.
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }

    /// Let `n` more callers through.
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Let every caller through from now on.
    pub fn open(&self) {
        self.permits.close();
    }

    /// How many callers are waiting in [`pass`](Self::pass) right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// Counts one waiting caller for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn release_lets_exactly_n_through_and_open_lets_all() {
        let gate = Gate::closed();
        let mut passers = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let gate = gate.clone();
            passers.spawn(async move { gate.pass().await });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(gate.waiting(), 3);
        gate.release(1);
        assert!(passers.join_next().await.is_some());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(gate.waiting(), 2);
        gate.open();
        while passers.join_next().await.is_some() {}
        assert_eq!(gate.waiting(), 0);
        gate.pass().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_stops_counting_as_waiting() {
        let gate = Gate::closed();
        let passer = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pass().await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(gate.waiting(), 1);
        passer.abort();
        assert!(passer.await.is_err());
        assert_eq!(gate.waiting(), 0);
    }
}
