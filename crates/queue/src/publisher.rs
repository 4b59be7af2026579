//! The confirmed publisher.
//!
//! A batch is published back to back (pipelined) and its confirms are awaited together. A message
//! counts as published only when the broker acked it *and* did not return it as unroutable
//! (`mandatory`): an unroutable message is confirmed with an Ack that carries the returned message.

use crate::broker::ConfirmChannel;
use crate::error::QueueError;
use crate::topology::TASK_ROUTING_KEY;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use reasonrec_core::TaskMessage;
use uuid::Uuid;

pub struct Publisher {
    ch: ConfirmChannel,
}

/// What happened to one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishReport {
    /// Ids whose messages the broker confirmed and routed.
    pub confirmed: Vec<Uuid>,
    /// Nacked by the broker (e.g. the queue is at its max length).
    pub nacked: usize,
    /// Confirmed but returned as unroutable.
    pub returned: usize,
}

impl Publisher {
    /// Opens a channel in confirm mode (`confirm_select` once per channel).
    pub async fn new(broker: &crate::Broker) -> Result<Self, QueueError> {
        Ok(Self { ch: broker.confirm_channel().await? })
    }

    pub async fn publish_batch(&self, messages: &[TaskMessage]) -> Result<PublishReport, QueueError> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(m.task_id.to_string().into());
            let confirm = self
                .ch
                .channel
                .basic_publish(
                    self.ch.topology.exchange.as_str().into(),
                    TASK_ROUTING_KEY.into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &m.encode(),
                    props,
                )
                .await?;
            pending.push((m.task_id, confirm));
        }
        let secs = self.ch.confirm_timeout.as_secs();
        let ids: Vec<Uuid> = pending.iter().map(|(id, _)| *id).collect();
        let confirms = tokio::time::timeout(
            self.ch.confirm_timeout,
            futures::future::join_all(pending.into_iter().map(|(_, c)| c)),
        )
        .await
        .map_err(|_| QueueError::Timeout { what: "publisher confirms", secs })?;
        let mut report = PublishReport { confirmed: Vec::with_capacity(ids.len()), ..Default::default() };
        for (id, confirm) in ids.into_iter().zip(confirms) {
            match confirm? {
                Confirmation::Ack(None) => report.confirmed.push(id),
                Confirmation::Ack(Some(_)) => report.returned += 1,
                Confirmation::Nack(_) => report.nacked += 1,
                // confirm_select was called on this channel, so this means the broker never
                // confirmed: treat as not published.
                Confirmation::NotRequested => report.nacked += 1,
            }
        }
        Ok(report)
    }
}
