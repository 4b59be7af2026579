//! RabbitMQ access: topology, the confirmed publisher and consumers.
//!
//! Layout:
//! - [`error`]: `QueueError` (broker and connection errors are retryable).
//! - [`topology`]: exchanges, work queue, retry tiers, dead and parked queues under a prefix,
//!   and their declaration (a diagram is in the module's doc).
//! - [`broker`]: a connection with channels for publishing and consuming.
//! - [`inbox`]: what comes out of the queues (the work consumer, the dead queue, a depth
//!   probe) and how each delivery is settled; the roles that consume never call lapin.
//! - [`publisher`]: pipelined publishes whose confirms are awaited per batch; only confirmed,
//!   routed messages count as published.
//! - [`session`]: the reconnect loop every broker client runs its sessions in.
//! - [`redirect`]: confirmed publishes of a delivery to a retry tier, the dead-letter exchange
//!   or the parked queue, and the headers that say why.
//!
//! Messages carry [`reasonrec_core::TaskMessage`] as JSON, persistent, on a durable queue.

pub mod broker;
pub mod error;
pub mod inbox;
pub mod publisher;
pub mod redirect;
pub mod session;
pub mod topology;

pub use broker::Broker;
pub use error::QueueError;
pub use inbox::{DeadQueue, Probe, Received, WorkConsumer};
pub use publisher::{PublishReport, Publisher};
pub use redirect::{Redirected, Redirector};
pub use topology::Topology;
