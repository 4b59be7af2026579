//! Names and declaration of the exchange, work queue and binding.

use crate::error::{QueueError, deadline};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use reasonrec_core::settings::{BrokerSettings, QueueType};

/// Routing key of task messages.
pub const TASK_ROUTING_KEY: &str = "task";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub work_queue: String,
    /// Messages a worker could not decode, with the reason in a header.
    pub dead_queue: String,
    pub queue_type: QueueType,
    pub max_length: u32,
}

impl Topology {
    pub fn new(settings: &BrokerSettings) -> Self {
        Self {
            exchange: format!("{}.tasks", settings.prefix),
            work_queue: format!("{}.tasks", settings.prefix),
            dead_queue: format!("{}.dead", settings.prefix),
            queue_type: settings.queue_type,
            max_length: settings.max_length,
        }
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from(kind)));
        if self.max_length > 0 {
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(self.max_length)));
            args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
        }
        args
    }

    /// Declares everything (idempotent). Both the coordinator and workers call it, so either may
    /// start first.
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        deadline(
            "exchange.declare",
            30,
            channel.exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        deadline(
            "queue.declare",
            30,
            channel.queue_declare(self.work_queue.as_str().into(), qopts, self.queue_arguments()),
        )
        .await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        deadline("queue.declare", 30, channel.queue_declare(self.dead_queue.as_str().into(), qopts, dead_args)).await?;
        deadline(
            "queue.bind",
            30,
            channel.queue_bind(
                self.work_queue.as_str().into(),
                self.exchange.as_str().into(),
                TASK_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(())
    }

    /// Messages waiting in the work queue (not counting unacked deliveries).
    pub async fn ready_messages(&self, channel: &Channel) -> Result<u32, QueueError> {
        let opts = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        let q = deadline(
            "queue.declare(passive)",
            30,
            channel.queue_declare(self.work_queue.as_str().into(), opts, FieldTable::default()),
        )
        .await?;
        Ok(q.message_count())
    }

    /// Deletes what [`Topology::declare`] made (tests and teardown).
    pub async fn delete(&self, channel: &Channel) -> Result<(), QueueError> {
        deadline(
            "queue.delete",
            30,
            channel.queue_delete(self.dead_queue.as_str().into(), QueueDeleteOptions::default()),
        )
        .await?;
        deadline(
            "queue.delete",
            30,
            channel.queue_delete(self.work_queue.as_str().into(), QueueDeleteOptions::default()),
        )
        .await?;
        deadline(
            "exchange.delete",
            30,
            channel.exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await?;
        Ok(())
    }
}
