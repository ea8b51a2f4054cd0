//! Group commit (the deliverer's inserts and attempt records, ingest's events): many concurrent callers, one statement (or transaction) for all of them.
//!
//! A [`Batcher`] owns one task. A caller hands over its item and waits for its own answer;
//! the task takes whatever items are waiting (at most `max`), runs them as one batch, and
//! answers each caller. Nothing waits for a batch to fill: with one caller a batch is one
//! item and costs what a lone statement costs; under load the items that queued while the
//! previous batch ran go together. So a database round trip is paid per batch, not per
//! delivery, and no latency is added when idle.

use std::{future::Future, sync::Arc};

use tokio::sync::{mpsc, oneshot};

/// A whole batch's failure, handed to every caller in it.
pub type BatchError = Arc<sqlx::Error>;

type Job<T, R> = (T, oneshot::Sender<Result<R, BatchError>>);

/// Hands items to the batch task; cheap to clone.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<Job<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the task. `name` labels its `hookrelay_batch_size` histogram. `run` gets a batch (at most `max` items, in arrival order) and
    /// answers with one result per item, in the same order. The task ends when the last
    /// `Batcher` is dropped.
    pub fn spawn<F, Fut>(name: &'static str, max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send,
    {
        let max = max.max(1);
        let (tx, mut rx) = mpsc::channel::<Job<T, R>>(max * 4);
        tokio::spawn(async move {
            let mut items = Vec::with_capacity(max);
            let mut replies = Vec::with_capacity(max);
            while let Some((item, reply)) = rx.recv().await {
                items.push(item);
                replies.push(reply);
                while items.len() < max {
                    match rx.try_recv() {
                        Ok((item, reply)) => {
                            items.push(item);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let n = items.len();
                metrics::histogram!("hookrelay_batch_size", "batch" => name).record(n as f64);
                match run(std::mem::replace(&mut items, Vec::with_capacity(max))).await {
                    Ok(results) => {
                        if results.len() != n {
                            tracing::error!(items = n, answers = results.len(), "a batch answered short");
                        }
                        for (reply, result) in replies.drain(..).zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(error) => {
                        let error = Arc::new(error);
                        for reply in replies.drain(..) {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
                // A reply sender left over (a short answer) is dropped here: its caller
                // sees the batch as failed, never as done.
                replies.clear();
            }
        });
        Self { tx }
    }

    /// Runs `item` in the next batch and returns its answer. A batcher that has stopped
    /// answers with an error, as a failed batch would.
    pub async fn call(&self, item: T) -> Result<R, BatchError> {
        let stopped = || Arc::new(sqlx::Error::PoolClosed);
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_batches_and_each_gets_its_own_answer() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn("test", 8, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(items.into_iter().map(|i| i * 10).collect())
            }
        });
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.call(i).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.unwrap();
            assert_eq!(answer, i * 10);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| n <= 8), "no batch over the maximum: {sizes:?}");
        assert!(
            sizes.len() < 20,
            "callers waiting together went in one batch: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_caller_in_it() {
        let batcher = Batcher::spawn("test", 4, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>(sqlx::Error::PoolTimedOut)
        });
        let error = batcher.call(1).await.unwrap_err();
        assert!(matches!(*error, sqlx::Error::PoolTimedOut));
    }

    #[tokio::test]
    async fn a_short_answer_is_a_failure_not_a_silent_success() {
        let batcher = Batcher::spawn("test", 4, |_: Vec<u32>| async { Ok(Vec::<u32>::new()) });
        assert!(batcher.call(1).await.is_err());
    }
}
