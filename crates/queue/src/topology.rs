//! Names and declaration of the exchanges, queues and bindings.
//!
//! ```text
//! outbox ──> <prefix>.tasks (direct, key "task") ──> <prefix>.tasks (work queue)
//!                 ^                                     │ delivery limit reached
//!                 │ TTL expired                         v
//!   <prefix>.retry.<secs>s  <── worker (commit failed)  <prefix>.dlx (direct, key "dead")
//!                                                       │
//!   worker (retries spent) ─────────────────────────────┤
//!                                                       v
//!                                  <prefix>.dead ──> coordinator: task failed with the reason
//!   worker (undecodable message) ──> <prefix>.parked (kept for people to read)
//! ```

use crate::error::{QueueError, deadline};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use reasonrec_core::settings::{BrokerSettings, QueueType};

/// Routing key of task messages.
pub const TASK_ROUTING_KEY: &str = "task";
/// Routing key of dead-lettered task messages on the dead-letter exchange.
pub const DEAD_ROUTING_KEY: &str = "dead";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub work_queue: String,
    /// Exchange the work queue dead-letters to (and workers publish spent retries to).
    pub dead_exchange: String,
    /// Dead-lettered task messages; the coordinator records each as a failed task.
    pub dead_queue: String,
    /// Messages nobody can decode, with the reason in a header; never consumed.
    pub parked_queue: String,
    /// Retry tiers: (delay in seconds, queue name), in the order retries use them.
    pub retry_queues: Vec<(u64, String)>,
    pub queue_type: QueueType,
    pub max_length: u32,
    pub delivery_limit: u32,
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn queue_type_name(t: QueueType) -> &'static str {
    match t {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    }
}

impl Topology {
    pub fn new(settings: &BrokerSettings) -> Self {
        let p = &settings.prefix;
        let mut delays = settings.retry_delays_secs.clone();
        delays.dedup();
        Self {
            exchange: format!("{p}.tasks"),
            work_queue: format!("{p}.tasks"),
            dead_exchange: format!("{p}.dlx"),
            dead_queue: format!("{p}.dead"),
            parked_queue: format!("{p}.parked"),
            retry_queues: delays.into_iter().map(|s| (s, format!("{p}.retry.{s}s"))).collect(),
            queue_type: settings.queue_type,
            max_length: settings.max_length,
            delivery_limit: settings.delivery_limit,
        }
    }

    /// The retry queue for the `n`-th retry (0-based): the tiers in order, then the last one.
    pub fn retry_queue(&self, n: u32) -> Option<&(u64, String)> {
        self.retry_queues.get(n as usize).or(self.retry_queues.last())
    }

    fn work_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text(queue_type_name(self.queue_type)));
        if self.max_length > 0 {
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(self.max_length)));
            args.insert("x-overflow".into(), text("reject-publish"));
        }
        args.insert("x-dead-letter-exchange".into(), text(&self.dead_exchange));
        args.insert("x-dead-letter-routing-key".into(), text(DEAD_ROUTING_KEY));
        if self.queue_type == QueueType::Quorum && self.delivery_limit > 0 {
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(self.delivery_limit)));
        }
        args
    }

    fn retry_queue_arguments(&self, delay_secs: u64) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text(queue_type_name(self.queue_type)));
        let ttl_ms = i64::try_from(delay_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert("x-dead-letter-exchange".into(), text(&self.exchange));
        args.insert("x-dead-letter-routing-key".into(), text(TASK_ROUTING_KEY));
        args
    }

    fn plain_quorum() -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args
    }

    /// Declares everything (idempotent). Both the coordinator and workers call it, so either may
    /// start first. A queue declared earlier with other arguments makes the broker refuse with
    /// PRECONDITION_FAILED: delete it (or pick another `broker.prefix`) after changing them.
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for exchange in [&self.exchange, &self.dead_exchange] {
            deadline(
                "exchange.declare",
                30,
                channel.exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        let declare = |name: &str, args: FieldTable| {
            let name = name.to_string();
            async move { deadline("queue.declare", 30, channel.queue_declare(name.as_str().into(), qopts, args)).await }
        };
        declare(&self.work_queue, self.work_queue_arguments()).await?;
        declare(&self.dead_queue, Self::plain_quorum()).await?;
        declare(&self.parked_queue, Self::plain_quorum()).await?;
        for (delay, name) in &self.retry_queues {
            declare(name, self.retry_queue_arguments(*delay)).await?;
        }
        let bind = |queue: &str, exchange: &str, key: &'static str| {
            let (queue, exchange) = (queue.to_string(), exchange.to_string());
            async move {
                deadline(
                    "queue.bind",
                    30,
                    channel.queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        key.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await
            }
        };
        bind(&self.work_queue, &self.exchange, TASK_ROUTING_KEY).await?;
        bind(&self.dead_queue, &self.dead_exchange, DEAD_ROUTING_KEY).await?;
        Ok(())
    }

    /// Messages waiting in the work queue (not counting unacked deliveries).
    pub async fn ready_messages(&self, channel: &Channel) -> Result<u32, QueueError> {
        self.queue_depth(channel, &self.work_queue).await
    }

    /// Messages waiting in `queue` (not counting unacked deliveries).
    pub async fn queue_depth(&self, channel: &Channel, queue: &str) -> Result<u32, QueueError> {
        let opts = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        let q =
            deadline("queue.declare(passive)", 30, channel.queue_declare(queue.into(), opts, FieldTable::default()))
                .await?;
        Ok(q.message_count())
    }

    /// Deletes what [`Topology::declare`] made (tests and teardown).
    pub async fn delete(&self, channel: &Channel) -> Result<(), QueueError> {
        let mut queues = vec![&self.dead_queue, &self.parked_queue, &self.work_queue];
        queues.extend(self.retry_queues.iter().map(|(_, n)| n));
        for q in queues {
            deadline("queue.delete", 30, channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
                .await?;
        }
        for e in [&self.exchange, &self.dead_exchange] {
            deadline(
                "exchange.delete",
                30,
                channel.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default()),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_tiers_repeat_the_last_delay() {
        let settings = BrokerSettings { retry_delays_secs: vec![10, 60], ..BrokerSettings::default() };
        let t = Topology::new(&settings);
        let delay = |n| t.retry_queue(n).map(|(d, _)| *d);
        assert_eq!((delay(0), delay(1), delay(2), delay(7)), (Some(10), Some(60), Some(60), Some(60)));
        assert_eq!(t.retry_queue(0).map(|(_, q)| q.as_str()), Some("reasonrec.retry.10s"));
    }
}
