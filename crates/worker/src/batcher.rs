//! One batcher for every "requests that arrive together share one statement" path (the commit
//! batcher in [`crate::commit`], the read batcher in [`crate::load`]).
//!
//! Each caller hands a request to the batcher and waits for its own answer. The batcher takes
//! what is waiting (up to `max_batch`) whenever the previous batch is done: no timer, so a lone
//! request is served at once and a busy worker's batches grow with the load. What a batch does,
//! and how a failure is shared out among its requests, is the [`Handler`]'s.

use reasonrec_store::StoreError;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Serves one batch: one answer per request, in the requests' order.
pub trait Handler: Send + Sync + 'static {
    type Request: Send + 'static;
    type Answer: Send + 'static;
    fn handle(&self, batch: Vec<Self::Request>) -> impl Future<Output = Vec<Result<Self::Answer, StoreError>>> + Send;
}

type Reply<H> = oneshot::Sender<Result<<H as Handler>::Answer, StoreError>>;

/// Handle to a running batcher; cheap to clone. The batcher stops when every handle is gone.
pub struct Batcher<H: Handler> {
    handler: Arc<H>,
    tx: Option<mpsc::Sender<(H::Request, Reply<H>)>>,
}

impl<H: Handler> Clone for Batcher<H> {
    fn clone(&self) -> Self {
        Self { handler: self.handler.clone(), tx: self.tx.clone() }
    }
}

impl<H: Handler> Batcher<H> {
    /// `max_batch` <= 1 serves each request on its own, without a batcher task.
    pub fn start(handler: H, max_batch: usize) -> Self {
        let handler = Arc::new(handler);
        if max_batch <= 1 {
            return Self { handler, tx: None };
        }
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(handler.clone(), rx, max_batch));
        Self { handler, tx: Some(tx) }
    }

    /// Serves `request` (with others) and returns its answer.
    pub async fn call(&self, request: H::Request) -> Result<H::Answer, StoreError> {
        let Some(tx) = &self.tx else {
            return alone(&*self.handler, request).await;
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((request, _))) = tx.send((request, reply)).await {
            return alone(&*self.handler, request).await;
        }
        match answer.await {
            Ok(result) => result,
            // The batcher went away with our request: nothing is known to be done, and the
            // callers' requests are idempotent.
            Err(_) => Err(StoreError::Batch("the batcher stopped".into())),
        }
    }
}

async fn alone<H: Handler>(handler: &H, request: H::Request) -> Result<H::Answer, StoreError> {
    handler
        .handle(vec![request])
        .await
        .pop()
        .unwrap_or_else(|| Err(StoreError::Batch("no answer for the request".into())))
}

/// `error` for each of `n` requests: the first gets the original value, the others its text.
pub fn shared_error<T>(error: StoreError, n: usize) -> Vec<Result<T, StoreError>> {
    let msg = error.to_string();
    let mut error = Some(error);
    (0..n).map(|_| Err(error.take().unwrap_or_else(|| StoreError::Batch(msg.clone())))).collect()
}

async fn run<H: Handler>(handler: Arc<H>, mut rx: mpsc::Receiver<(H::Request, Reply<H>)>, max_batch: usize) {
    let mut entries: Vec<(H::Request, Reply<H>)> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        entries.push(first);
        while entries.len() < max_batch {
            match rx.try_recv() {
                Ok(e) => entries.push(e),
                Err(_) => break,
            }
        }
        let (batch, replies): (Vec<H::Request>, Vec<Reply<H>>) = entries.drain(..).unzip();
        let n = batch.len();
        let mut answers = handler.handle(batch).await.into_iter();
        for reply in replies {
            let answer =
                answers.next().unwrap_or_else(|| Err(StoreError::Batch(format!("no answer in a batch of {n}"))));
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Doubles each number; records the batches it saw; fails a batch holding 0.
    struct Doubler(Arc<Mutex<Vec<usize>>>);

    impl Handler for Doubler {
        type Request = u32;
        type Answer = u32;
        async fn handle(&self, batch: Vec<u32>) -> Vec<Result<u32, StoreError>> {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(batch.len());
            }
            if batch.contains(&0) {
                return shared_error(StoreError::Batch("zero".into()), batch.len());
            }
            batch.into_iter().map(|x| Ok(x * 2)).collect()
        }
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_concurrent_callers_share_batches() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let b = Batcher::start(Doubler(seen.clone()), 8);
        let calls: Vec<_> =
            (1..=20u32).map(|x| (x, b.clone())).map(|(x, b)| async move { (x, b.call(x).await) }).collect();
        for (x, answer) in futures::future::join_all(calls).await {
            assert_eq!(answer.ok(), Some(x * 2));
        }
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen.iter().sum::<usize>(), 20, "every request served once");
        assert!(seen.iter().all(|&n| n <= 8), "no batch over max_batch: {seen:?}");
        assert!(seen.len() < 20, "requests waiting together were batched: {seen:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_answers_every_caller_with_the_error_and_unbatched_mode_works() {
        let b = Batcher::start(Doubler(Arc::default()), 1);
        assert_eq!(b.call(3).await.ok(), Some(6));
        assert!(matches!(b.call(0).await, Err(StoreError::Batch(m)) if m == "zero"));
        let errors = shared_error::<()>(StoreError::Batch("x".into()), 3);
        assert_eq!(errors.len(), 3);
        assert!(errors.iter().all(|e| matches!(e, Err(StoreError::Batch(m)) if m.contains('x'))));
    }
}
