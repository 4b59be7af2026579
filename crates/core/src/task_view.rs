//! A view of one task, by id, that one role can make and another shows: the corpus browser's
//! task page asks the worker's rendering (the prompt as sent) and the trainer's (the student
//! example) through it, without the coordinator knowing either.

use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use uuid::Uuid;

/// By task id: the view as JSON, or why there is none.
pub type TaskView =
    Arc<dyn Fn(Uuid) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>> + Send + Sync>;

/// A [`TaskView`] of `make`: its value serialised, its error as text.
pub fn task_view<F, Fut, T, E>(make: F) -> TaskView
where
    F: Fn(Uuid) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize,
    E: std::fmt::Display,
{
    Arc::new(move |task| {
        let made = make(task);
        Box::pin(async move {
            let value = made.await.map_err(|e| e.to_string())?;
            serde_json::to_value(value).map_err(|e| e.to_string())
        })
    })
}
