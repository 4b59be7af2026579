//! One AMQP connection per process role, with channels made on demand.

use crate::error::{QueueError, deadline};
use crate::topology::Topology;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use reasonrec_core::settings::BrokerSettings;

pub struct Broker {
    connection: Connection,
    topology: Topology,
    settings: BrokerSettings,
}

impl Broker {
    /// Connects and declares the topology.
    pub async fn connect(settings: &BrokerSettings, connection_name: &str) -> Result<Self, QueueError> {
        let props = ConnectionProperties::default().with_connection_name(connection_name.into());
        let connection = deadline("connect", 30, Connection::connect(&settings.url, props)).await?;
        let broker = Self { connection, topology: Topology::new(settings), settings: settings.clone() };
        let ch = broker.channel().await?;
        broker.topology.declare(&ch).await?;
        let _ = ch.close(200, "topology declared".into()).await;
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    pub async fn channel(&self) -> Result<Channel, QueueError> {
        deadline("channel.open", 30, self.connection.create_channel()).await
    }

    /// A consumer on the work queue with manual acks and `prefetch` unacked deliveries at most.
    pub async fn consume(&self, prefetch: u16, tag: &str) -> Result<(Channel, Consumer), QueueError> {
        let ch = self.channel().await?;
        deadline("basic.qos", 30, ch.basic_qos(prefetch, BasicQosOptions { global: false })).await?;
        let consumer = deadline(
            "basic.consume",
            30,
            ch.basic_consume(
                self.topology.work_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions { no_ack: false, ..Default::default() },
                FieldTable::default(),
            ),
        )
        .await?;
        Ok((ch, consumer))
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
