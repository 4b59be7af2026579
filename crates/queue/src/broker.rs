//! One AMQP connection per process role, with channels made on demand.

use crate::error::{QueueError, deadline};
use crate::inbox::{DeadQueue, Probe, WorkConsumer};
use crate::topology::Topology;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use reasonrec_core::settings::BrokerSettings;

/// How long [`Broker::close`] waits for the broker to confirm.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Broker {
    connection: Connection,
    topology: Topology,
    settings: BrokerSettings,
    /// Every channel made here, so that [`Broker::close`] closes them before the connection.
    /// (A channel whose last handle is dropped queues its own close; queued just before the
    /// connection's close, it found the connection closing and lapin logged an ERROR
    /// "Connection error ... Closing (channel.close)" on every clean shutdown.)
    channels: std::sync::Mutex<Vec<Channel>>,
}

impl Broker {
    /// Connects and declares the topology.
    pub async fn connect(settings: &BrokerSettings, connection_name: &str) -> Result<Self, QueueError> {
        let broker = Self::connect_undeclared(settings, connection_name).await?;
        let ch = broker.channel().await?;
        broker.topology.declare(&ch).await?;
        let _ = deadline("channel.close", CLOSE_WAIT.as_secs(), ch.close(200, "topology declared".into())).await;
        Ok(broker)
    }

    /// Connects without declaring anything: for deleting a topology, whose declaration may be
    /// refused (PRECONDITION_FAILED) when its arguments changed.
    pub async fn connect_undeclared(settings: &BrokerSettings, connection_name: &str) -> Result<Self, QueueError> {
        let props = ConnectionProperties::default().with_connection_name(connection_name.into());
        let connection = deadline("connect", 30, Connection::connect(&settings.url, props)).await?;
        Ok(Self {
            connection,
            topology: Topology::new(settings),
            settings: settings.clone(),
            channels: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    pub async fn channel(&self) -> Result<Channel, QueueError> {
        let channel = deadline("channel.open", 30, self.connection.create_channel()).await?;
        if let Ok(mut all) = self.channels.lock() {
            // Channels closed meanwhile (by us, or by the broker after an error) are let go.
            all.retain(|c| c.status().connected());
            all.push(channel.clone());
        }
        Ok(channel)
    }

    /// A channel in confirm mode (`confirm_select` once per channel): every publish on it is
    /// confirmed or nacked by the broker, within `broker.confirm_timeout_secs`.
    pub(crate) async fn confirm_channel(&self) -> Result<ConfirmChannel, QueueError> {
        let channel = self.channel().await?;
        deadline("confirm.select", 30, channel.confirm_select(ConfirmSelectOptions::default())).await?;
        Ok(ConfirmChannel {
            channel,
            topology: self.topology().clone(),
            confirm_timeout: std::time::Duration::from_secs(self.settings().confirm_timeout_secs),
        })
    }

    /// A consumer on the work queue with manual acks and `prefetch` unacked deliveries at most.
    pub async fn consume(&self, prefetch: u16, tag: &str) -> Result<WorkConsumer, QueueError> {
        let channel = self.channel().await?;
        deadline("basic.qos", 30, channel.basic_qos(prefetch, BasicQosOptions { global: false })).await?;
        let consumer = deadline(
            "basic.consume",
            30,
            channel.basic_consume(
                self.topology.work_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions { no_ack: false, ..Default::default() },
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(WorkConsumer { channel, consumer })
    }

    /// The dead queue, for reading what was dead-lettered.
    pub async fn dead_queue(&self) -> Result<DeadQueue, QueueError> {
        Ok(DeadQueue { channel: self.channel().await?, queue: self.topology.dead_queue.clone() })
    }

    /// A probe of queue depths, on a channel of its own.
    pub async fn probe(&self) -> Result<Probe, QueueError> {
        Ok(Probe { channel: self.channel().await?, topology: self.topology.clone() })
    }

    /// Closes the channels made here that are still open, then the connection, waiting at most
    /// [`CLOSE_WAIT`] for each of the broker's close-ok. Seen
    /// once on this machine: `connection.close` never resolved after a `run create --wait` had
    /// finished its run (the process then hung for good, all its work done); after the wait
    /// the connection is dropped, which closes the socket.
    pub async fn close(&self) {
        let open: Vec<Channel> = match self.channels.lock() {
            Ok(mut all) => all.drain(..).filter(|c| c.status().connected()).collect(),
            Err(_) => Vec::new(),
        };
        for c in open {
            let _ = deadline("channel.close", CLOSE_WAIT.as_secs(), c.close(200, "closing".into())).await;
        }
        if tokio::time::timeout(CLOSE_WAIT, self.connection.close(200, "bye".into())).await.is_err() {
            tracing::warn!(
                wait_secs = CLOSE_WAIT.as_secs(),
                "broker did not confirm the connection close; dropping it"
            );
        }
    }
}

/// What every confirmed publisher holds: its channel in confirm mode, the names it publishes to
/// and how long a confirm may take.
pub(crate) struct ConfirmChannel {
    pub(crate) channel: Channel,
    pub(crate) topology: Topology,
    pub(crate) confirm_timeout: std::time::Duration,
}
