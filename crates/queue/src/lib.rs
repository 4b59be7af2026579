//! RabbitMQ access: topology, the confirmed publisher and consumers.
//!
//! Layout:
//! - [`error`]: `QueueError` (broker and connection errors are retryable).
//! - [`topology`]: exchange, work queue and binding names under a prefix, and their declaration.
//! - [`broker`]: a connection with channels for publishing and consuming.
//! - [`publisher`]: pipelined publishes whose confirms are awaited per batch; only confirmed,
//!   routed messages count as published.
//!
//! Messages carry [`reasonrec_core::TaskMessage`] as JSON, persistent, on a durable queue.

pub mod broker;
pub mod error;
pub mod publisher;
pub mod topology;

pub use broker::Broker;
pub use error::QueueError;
pub use publisher::{DeadLetters, PublishReport, Publisher};
pub use topology::Topology;
