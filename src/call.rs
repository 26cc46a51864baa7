//! What an RPC's caller gives every piece of work done for it: a deadline and a way to tell
//! that the caller went away.
//!
//! ttrpc-rust drops a handler's future when the request's deadline passes or its connection
//! closes: code after the `.await` it was parked on never runs. So a mutating operation does not
//! run in the handler's future. [`detached`] runs it as a task of its own, which always runs to
//! completion (its bookkeeping and rollback included), and the handler only waits for it. When
//! the handler's future is dropped, the task's [`Call`] is cancelled: runtime and logger children
//! started for it are killed, the operation fails, and it undoes what it did.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::error::{Error, Result};

/// How much earlier than the caller's deadline a runtime call is stopped, so the answer (and
/// the rollback) reach the caller before it gives up: a tenth of the time it gave, at most 1 s.
pub fn margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_secs(1))
}

#[derive(Default)]
struct Flag {
    set: AtomicBool,
    notify: Notify,
}

#[derive(Clone, Default)]
pub struct Call {
    /// When the work must have finished (already less the margin), if the caller said.
    pub deadline: Option<Instant>,
    cancelled: Arc<Flag>,
}

impl Call {
    /// No deadline and nobody to go away: background work (the kill after init's exit).
    pub fn background() -> Call {
        Call::default()
    }

    /// Background work bounded by `limit` (cleanup, which must not hang on a hung runtime).
    pub fn bounded(limit: Duration) -> Call {
        Call { deadline: Some(Instant::now() + limit), ..Default::default() }
    }

    /// A call whose caller gave `timeout` (ttrpc's `timeout_nano`; 0 means none).
    pub fn with_timeout(timeout: Option<Duration>) -> Call {
        let deadline = timeout.filter(|t| !t.is_zero()).map(|t| Instant::now() + t - margin(t));
        Call { deadline, ..Default::default() }
    }

    pub fn cancel(&self) {
        self.cancelled.set.store(true, Ordering::SeqCst);
        self.cancelled.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.set.load(Ordering::SeqCst)
    }

    /// Resolves when the caller went away.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.cancelled.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves at the deadline (never without one).
    pub async fn expired(&self) {
        match self.deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    }
}

/// Cancels the call when dropped: held by the handler's future.
struct CancelOnDrop(Call);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Run `work` as its own task, to completion, and wait for its result. If this future is
/// dropped (the caller's deadline passed, its connection closed), the work's `Call` is
/// cancelled and the work undoes itself in its task; nothing is left half-done.
pub async fn detached<T, F>(call: Call, work: impl FnOnce(Call) -> F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let guard = CancelOnDrop(call.clone());
    let task = tokio::spawn(work(call));
    let result = task.await.map_err(|e| Error::Other(format!("operation failed: {e}")))?;
    drop(guard);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins() {
        assert_eq!(margin(Duration::from_secs(3)), Duration::from_millis(300));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(1));
        assert!(Call::with_timeout(Some(Duration::ZERO)).deadline.is_none());
        let c = Call::with_timeout(Some(Duration::from_secs(10)));
        let left = c.deadline.unwrap() - Instant::now();
        assert!(left <= Duration::from_secs(9) && left > Duration::from_secs(8), "{left:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_caller_cancels_but_the_work_finishes() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let fut = detached(Call::background(), |call| async move {
            call.cancelled().await;
            // the rollback after the cancel still runs
            tokio::task::yield_now().await;
            let _ = done_tx.send("rolled back");
            Err::<(), _>(Error::Cancelled("gone".into()))
        });
        // poll once so the task exists, then drop the caller
        let mut fut = Box::pin(fut);
        assert!(futures_poll_once(&mut fut).await.is_none());
        drop(fut);
        assert_eq!(done_rx.await.unwrap(), "rolled back");
    }

    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
