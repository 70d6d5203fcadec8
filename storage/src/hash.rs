//! The one SHA-256 sink every upload path feeds, and the byte budget that bounds what uploads
//! hold in memory.
//!
//! SHA-256 is the one inherently sequential cost of an upload, so it runs on a blocking thread
//! of its own, fed batches of about [`HASH_BATCH`] bytes, and overlaps with receiving the body
//! and writing it out instead of adding to them.
//!
//! The [`Budget`] is shared by every upload of a process: a chunk's bytes are counted from the
//! moment they are taken off the connection until they are hashed (and, on local storage,
//! written). When the budget is spent, uploads stop reading their bodies, so TCP pushes back on
//! the clients; memory stays bounded whatever the number of half-sent requests.

use crate::error::{Error, Result};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes handed to the hashing thread at a time: large enough that queueing costs nothing
/// next to hashing, small enough that a stalled upload holds little.
pub(crate) const HASH_BATCH: usize = 256 * 1024;
/// Batches queued for the hashing thread before the sender waits for it.
pub(crate) const HASH_QUEUE: usize = 4;
/// Default budget of bytes all uploads of a process may hold in memory at once.
pub const DEFAULT_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes in memory that uploads may hold at once, shared by all of them (cheap to clone).
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT_BUDGET)
    }
}

impl Budget {
    /// A budget of `bytes` (at least one batch, so every upload can make progress).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.clamp(2 * HASH_BATCH, Semaphore::MAX_PERMITS);
        Budget {
            sem: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes currently held by uploads.
    pub fn in_use(&self) -> usize {
        self.total - self.sem.available_permits()
    }

    /// Waits until `n` bytes (capped at the whole budget) may be held.
    pub(crate) async fn take(&self, n: usize) -> Result<Held> {
        let n = n.clamp(1, self.total) as u32;
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Error::Corrupt("upload budget closed".into()))?;
        Ok(Held(Some(permit)))
    }
}

/// Bytes counted against a [`Budget`] until dropped.
#[derive(Debug, Default)]
pub(crate) struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    /// Adds `other`'s bytes to this holding.
    pub(crate) fn merge(&mut self, other: Held) {
        match (&mut self.0, other.0) {
            (Some(a), Some(b)) => a.merge(b),
            (slot @ None, b) => *slot = b,
            (_, None) => {}
        }
    }
}

/// A batch of body chunks and the budget they hold.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) len: usize,
    pub(crate) held: Held,
}

impl Batch {
    pub(crate) fn push(&mut self, chunk: Bytes, held: Held) {
        self.len += chunk.len();
        self.chunks.push(chunk);
        self.held.merge(held);
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len >= HASH_BATCH
    }
}

/// The sending end of a pipeline stage: batches chunks and hands full batches on.
pub(crate) struct Feeder {
    tx: Option<tokio::sync::mpsc::Sender<Batch>>,
    batch: Batch,
}

impl Feeder {
    /// A feeder sending to `tx`.
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Batch>) -> Self {
        Feeder {
            tx: Some(tx),
            batch: Batch::default(),
        }
    }

    /// Takes `n` bytes of `budget` for the next chunk. When the budget is spent, the partial
    /// batch is sent on first: every upload waiting for budget then holds none that only it
    /// could release, so waiting can never deadlock.
    pub(crate) async fn take(&mut self, budget: &Budget, n: usize) -> Result<Held> {
        let n = n.clamp(1, budget.total) as u32;
        if let Ok(p) = budget.sem.clone().try_acquire_many_owned(n) {
            return Ok(Held(Some(p)));
        }
        self.flush().await?;
        budget.take(n as usize).await
    }

    /// Queues `b` (holding `held` of the budget).
    pub(crate) async fn feed(&mut self, b: Bytes, held: Held) -> Result<()> {
        self.batch.push(b, held);
        if self.batch.is_full() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the partial batch on.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if self.batch.chunks.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        match &self.tx {
            Some(tx) => tx
                .send(batch)
                .await
                .map_err(|_| Error::Corrupt("upload pipeline stopped".into())),
            None => Ok(()),
        }
    }

    /// Sends what is left and closes the stage's input.
    pub(crate) async fn close(&mut self) -> Result<()> {
        let r = self.flush().await;
        self.tx = None;
        r
    }
}

/// SHA-256 on a blocking thread of its own, fed in batches.
pub(crate) struct HashThread {
    feeder: Feeder,
    handle: tokio::task::JoinHandle<Sha256>,
}

impl HashThread {
    /// Starts hashing, continuing from `h`.
    pub(crate) fn start(h: Sha256) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(HASH_QUEUE);
        HashThread {
            feeder: Feeder::new(tx),
            handle: Self::spawn(h, rx),
        }
    }

    /// A hashing thread that reads its batches from `rx` (another stage sends them on).
    pub(crate) fn spawn(mut h: Sha256, mut rx: tokio::sync::mpsc::Receiver<Batch>) -> tokio::task::JoinHandle<Sha256> {
        tokio::task::spawn_blocking(move || {
            while let Some(batch) = rx.blocking_recv() {
                for b in &batch.chunks {
                    h.update(b);
                }
                // The batch's budget is returned here, once its bytes are hashed.
            }
            h
        })
    }

    /// Takes budget for the next chunk (see [`Feeder::take`]).
    pub(crate) async fn take(&mut self, budget: &Budget, n: usize) -> Result<Held> {
        self.feeder.take(budget, n).await
    }

    /// Queues `b` (holding `held` of the budget) for hashing.
    pub(crate) async fn feed(&mut self, b: Bytes, held: Held) -> Result<()> {
        self.feeder.feed(b, held).await
    }

    /// Hashes what is queued and returns the hasher.
    pub(crate) async fn finish(mut self) -> Result<Sha256> {
        let _ = self.feeder.close().await;
        join(self.handle).await
    }
}

/// Waits for a hashing thread.
pub(crate) async fn join(handle: tokio::task::JoinHandle<Sha256>) -> Result<Sha256> {
    handle
        .await
        .map_err(|e| Error::Corrupt(format!("hashing thread failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_smaller_than_the_uploads_waiting_never_deadlocks() {
        // Eight uploads, each of which could hold a partial batch, share two batches' worth.
        let budget = Budget::new(2 * HASH_BATCH);
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let budget = budget.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = HashThread::start(Sha256::new());
                for _ in 0..40 {
                    let held = h.take(&budget, 50_000).await.expect("budget");
                    h.feed(Bytes::from(vec![i; 50_000]), held).await.expect("feed");
                    tokio::task::yield_now().await;
                }
                h.finish().await.expect("finish")
            }));
        }
        let all = tokio::time::timeout(std::time::Duration::from_secs(30), futures::future::join_all(tasks))
            .await
            .expect("uploads sharing a small budget finish");
        assert_eq!(all.len(), 8);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn hashes_in_batches_and_returns_the_budget() {
        let budget = Budget::new(1024 * 1024);
        let mut h = HashThread::start(Sha256::new());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for c in data.chunks(70_000) {
            let held = h.take(&budget, c.len()).await.expect("budget");
            h.feed(Bytes::copy_from_slice(c), held).await.expect("feed");
            assert!(budget.in_use() <= budget.total());
        }
        let got = h.finish().await.expect("finish").finalize();
        assert_eq!(got, Sha256::digest(&data));
        assert_eq!(budget.in_use(), 0, "every byte's budget came back");
    }
}
