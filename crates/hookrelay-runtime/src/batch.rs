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
    /// Starts the task. `name` labels its `hookrelay_batch_size` and `hookrelay_batch_seconds`
    /// (a batch's run, from start to answer) histograms. `run` gets a batch (at most `max` items, in arrival order) and
    /// answers with one result per item, in the same order. One batch runs at a time. The
    /// task ends when the last `Batcher` is dropped.
    pub fn spawn<F, Fut>(name: &'static str, max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send + 'static,
    {
        Self::spawn_parallel(name, max, 1, run)
    }

    /// As [`Batcher::spawn`], for work nobody waits on (a clean-up after the fact): a batch
    /// waits up to `linger` after its first item for more, so a trickle of items costs one
    /// statement per `linger` instead of one per item.
    pub fn spawn_lingering<F, Fut>(name: &'static str, max: usize, linger: std::time::Duration, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send + 'static,
    {
        Self::start(name, max, 1, linger, run)
    }

    /// As [`Batcher::spawn`], with up to `parallel` batches running at once: while one
    /// batch waits for its commit (an fsync), the next is already being written on another
    /// connection. Items that arrive while all `parallel` batches run wait together for the
    /// next free one. `run` must then be safe to run concurrently with itself: batches that
    /// may touch the same rows must lock them in one order (sort by key), or they can
    /// deadlock.
    pub fn spawn_parallel<F, Fut>(name: &'static str, max: usize, parallel: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send + 'static,
    {
        Self::start(name, max, parallel, std::time::Duration::ZERO, run)
    }

    fn start<F, Fut>(name: &'static str, max: usize, parallel: usize, linger: std::time::Duration, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send + 'static,
    {
        let max = max.max(1);
        let running = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let (tx, mut rx) = mpsc::channel::<Job<T, R>>(max * 4);
        tokio::spawn(async move {
            loop {
                // A free run first, then the items: what arrives while every run is busy
                // goes into the next batch together.
                let Ok(permit) = running.clone().acquire_owned().await else {
                    return;
                };
                let Some((item, reply)) = rx.recv().await else {
                    return;
                };
                let (mut items, mut replies) = (Vec::with_capacity(max), Vec::with_capacity(max));
                items.push(item);
                replies.push(reply);
                let until = tokio::time::Instant::now() + linger;
                while items.len() < max {
                    let next = match rx.try_recv() {
                        Ok(job) => Some(job),
                        Err(_) if linger.is_zero() => None,
                        Err(_) => tokio::time::timeout_at(until, rx.recv()).await.ok().flatten(),
                    };
                    let Some((item, reply)) = next else {
                        break;
                    };
                    items.push(item);
                    replies.push(reply);
                }
                metrics::histogram!("hookrelay_batch_size", "batch" => name).record(items.len() as f64);
                let batch = run(items);
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let outcome = batch.await;
                    metrics::histogram!("hookrelay_batch_seconds", "batch" => name)
                        .record(started.elapsed().as_secs_f64());
                    answer(outcome, replies);
                    drop(permit);
                });
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

/// Hands each caller its result, or the batch's error. A reply sender left over (a short
/// answer) is dropped: its caller sees the batch as failed, never as done.
fn answer<R>(outcome: Result<Vec<R>, sqlx::Error>, replies: Vec<oneshot::Sender<Result<R, BatchError>>>) {
    match outcome {
        Ok(results) => {
            if results.len() != replies.len() {
                tracing::error!(items = replies.len(), answers = results.len(), "a batch answered short");
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
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
    async fn parallel_batches_overlap_and_one_batch_at_a_time_does_not() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Each batch holds for 50 ms and notes how many batches were running at its start.
        async fn most_at_once(parallel: usize) -> usize {
            let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (r, m) = (running.clone(), most.clone());
            let batcher = Batcher::spawn_parallel("test", 2, parallel, move |items: Vec<u32>| {
                let (r, m) = (r.clone(), m.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok(items)
                }
            });
            let calls: Vec<_> = (0..16)
                .map(|i| {
                    let b = batcher.clone();
                    tokio::spawn(async move { b.call(i).await.unwrap() == i })
                })
                .collect();
            for call in calls {
                assert!(call.await.unwrap(), "each caller gets its own answer");
            }
            most.load(Ordering::SeqCst)
        }
        assert_eq!(most_at_once(1).await, 1);
        assert_eq!(most_at_once(3).await, 3);
    }

    #[tokio::test]
    async fn a_lingering_batch_gathers_a_trickle_and_a_plain_one_does_not() {
        async fn sizes(linger: std::time::Duration) -> Vec<usize> {
            let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = sizes.clone();
            let run = move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.len());
                async move { Ok(items) }
            };
            let batcher = if linger.is_zero() {
                Batcher::spawn("test", 64, run)
            } else {
                Batcher::spawn_lingering("test", 64, linger, run)
            };
            // One item every 5 ms, each caller waiting for its answer on its own task.
            let mut calls = Vec::new();
            for i in 0..10 {
                let b = batcher.clone();
                calls.push(tokio::spawn(async move { b.call(i).await.unwrap() == i }));
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            for call in calls {
                assert!(call.await.unwrap(), "each caller gets its own answer");
            }
            sizes.lock().unwrap().clone()
        }
        let plain = sizes(std::time::Duration::ZERO).await;
        assert_eq!(plain.len(), 10, "nothing waits for a plain batch to fill: {plain:?}");
        let lingering = sizes(std::time::Duration::from_secs(1)).await;
        assert_eq!(lingering, vec![10], "the trickle went in one batch");
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
