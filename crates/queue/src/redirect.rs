//! Sends a delivery somewhere other than back to the work queue: a delayed retry tier, the
//! dead-letter exchange, or the parked queue. Each publish is confirmed before the caller acks
//! the original delivery, so a message is never acked without its copy being safe.

use crate::broker::ConfirmChannel;
use crate::error::QueueError;
use crate::topology::DEAD_ROUTING_KEY;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

/// Header with the reason a message was parked, retried or dead-lettered by reasonrec.
pub const ERROR_HEADER: &str = "x-reasonrec-error";
/// Header counting the retries a task message went through the delay tiers.
pub const RETRIES_HEADER: &str = "x-reasonrec-retries";

pub struct Redirector {
    ch: ConfirmChannel,
}

/// Where [`Redirector::retry_or_dead`] sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirected {
    /// Into a retry tier; back in the work queue after this many seconds.
    Retry { delay_secs: u64 },
    /// Retries spent: dead-lettered.
    Dead,
}

impl Redirector {
    pub async fn new(broker: &crate::Broker) -> Result<Self, QueueError> {
        Ok(Self { ch: broker.confirm_channel().await? })
    }

    /// Parks an undecodable message with `reason`.
    pub async fn park(&self, payload: &[u8], reason: &str) -> Result<(), QueueError> {
        let queue = self.ch.topology.parked_queue.clone();
        self.publish("", &queue, payload, reason, None).await
    }

    /// Sends a task message to a delay tier after its `retries_done`-th retry, or to the
    /// dead-letter exchange once `max_retries` are spent.
    pub async fn retry_or_dead(
        &self,
        payload: &[u8],
        retries_done: u32,
        max_retries: u32,
        reason: &str,
    ) -> Result<Redirected, QueueError> {
        match self.ch.topology.retry_queue(retries_done) {
            Some((delay, queue)) if retries_done < max_retries => {
                let (delay, queue) = (*delay, queue.clone());
                self.publish("", &queue, payload, reason, Some(retries_done + 1)).await?;
                Ok(Redirected::Retry { delay_secs: delay })
            }
            _ => {
                let exchange = self.ch.topology.dead_exchange.clone();
                let reason = format!("retries spent ({retries_done}): {reason}");
                self.publish(&exchange, DEAD_ROUTING_KEY, payload, &reason, Some(retries_done)).await?;
                Ok(Redirected::Dead)
            }
        }
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        reason: &str,
        retries: Option<u32>,
    ) -> Result<(), QueueError> {
        let mut headers = FieldTable::default();
        let reason: String = reason.chars().take(1000).collect();
        headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(reason.as_str().into()));
        if let Some(n) = retries {
            headers.insert(RETRIES_HEADER.into(), AMQPValue::LongLongInt(i64::from(n)));
        }
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let confirm = self
            .ch
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                payload,
                props,
            )
            .await?;
        let secs = self.ch.confirm_timeout.as_secs();
        match tokio::time::timeout(self.ch.confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(_)) => Err(QueueError::Refused { what: "redirect publish (nacked or unroutable)" }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(QueueError::Timeout { what: "redirect confirm", secs }),
        }
    }
}

/// An integer header (the broker and clients use several integer widths).
pub fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(n.max(0)).ok()
}

/// A string header.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Why a message reached the dead queue, in words: reasonrec's own reason header when a worker
/// sent it there, else the broker's (`x-first-death-reason`, e.g. `delivery_limit`).
pub fn dead_reason(props: &BasicProperties) -> String {
    if let Some(r) = header_str(props, ERROR_HEADER) {
        return r;
    }
    match header_str(props, "x-first-death-reason").as_deref() {
        Some("delivery_limit") => {
            "delivery limit reached: delivered too many times without an ack (workers crashed or handed it back)".into()
        }
        Some(other) => format!("dead-lettered by the broker ({other})"),
        None => "dead-lettered (no reason given)".into(),
    }
}
