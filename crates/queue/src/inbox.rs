//! What comes out of the queues, and how it is settled: the work queue's consumer, the dead
//! queue's reader, each delivery's ack / hand-back / reject, and the passive probe that reads
//! queue depths. The roles that consume (the worker, the coordinator's chores) see these types
//! only; every AMQP call is made here.

use crate::broker::CLOSE_WAIT;
use crate::error::{QueueError, deadline};
use crate::redirect::{RETRIES_HEADER, dead_reason, header_u32};
use crate::topology::Topology;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Channel, Consumer};

/// One message taken from a queue, unsettled: exactly one of [`ack`](Self::ack),
/// [`hand_back`](Self::hand_back) or [`reject`](Self::reject) settles it (dropped unsettled, it
/// goes back to the queue when its channel closes).
pub struct Received {
    delivery: Delivery,
}

impl Received {
    /// The message body.
    pub fn data(&self) -> &[u8] {
        &self.delivery.data
    }

    /// How many times workers sent it to a retry tier already (0 for a first delivery).
    pub fn retries(&self) -> u32 {
        header_u32(&self.delivery.properties, RETRIES_HEADER).unwrap_or(0)
    }

    /// Why it was dead-lettered, in words (a dead queue's message).
    pub fn dead_reason(&self) -> String {
        dead_reason(&self.delivery.properties)
    }

    /// Done with: the broker forgets it.
    pub async fn ack(self) -> Result<(), QueueError> {
        self.delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Not done: back to the head of its queue, for any consumer.
    pub async fn hand_back(self) -> Result<(), QueueError> {
        self.delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await?;
        Ok(())
    }

    /// Refused without requeue: the broker dead-letters or drops it, as the queue says.
    pub async fn reject(self) -> Result<(), QueueError> {
        self.delivery.acker.reject(BasicRejectOptions { requeue: false }).await?;
        Ok(())
    }
}

/// The work queue's consumer (manual acks, a prefetch limit), on a channel of its own.
pub struct WorkConsumer {
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
}

impl WorkConsumer {
    /// The next delivery; `None` when the broker closed the consumer.
    pub async fn next(&mut self) -> Option<Result<Received, QueueError>> {
        let next = self.consumer.next().await?;
        Some(next.map(|delivery| Received { delivery }).map_err(QueueError::from))
    }

    /// Asks for no more deliveries (those in hand stay to be settled). Best effort: a broken
    /// channel hands everything back anyway.
    pub async fn cancel(&self) {
        let _ = self.channel.basic_cancel(self.consumer.tag(), BasicCancelOptions::default()).await;
    }

    /// Closes the channel: whatever is still unsettled goes back to the queue. Waits at most
    /// [`CLOSE_WAIT`] for the broker.
    pub async fn close(self) {
        let _ =
            deadline("channel.close", CLOSE_WAIT.as_secs(), self.channel.close(200, "consumer stopping".into())).await;
    }
}

/// The dead queue, read one message at a time (`basic.get`).
pub struct DeadQueue {
    pub(crate) channel: Channel,
    pub(crate) queue: String,
}

impl DeadQueue {
    /// The next dead-lettered message, if any is waiting.
    pub async fn get(&self) -> Result<Option<Received>, QueueError> {
        let get = self.channel.basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: false });
        Ok(deadline("basic.get", 30, get).await?.map(|m| Received { delivery: m.delivery }))
    }
}

/// Reads queue depths with passive declares, on a channel of its own: a failed passive declare
/// (the queue is gone) closes the channel it ran on, so after [`QueueError::is_not_found`] the
/// probe is spent and a new one is needed.
pub struct Probe {
    pub(crate) channel: Channel,
    pub(crate) topology: Topology,
}

impl Probe {
    /// Messages waiting in the work queue (not counting unacked deliveries).
    pub async fn ready_messages(&self) -> Result<u32, QueueError> {
        self.topology.ready_messages(&self.channel).await
    }

    /// Messages waiting in `queue` (not counting unacked deliveries).
    pub async fn depth(&self, queue: &str) -> Result<u32, QueueError> {
        self.topology.queue_depth(&self.channel, queue).await
    }
}
