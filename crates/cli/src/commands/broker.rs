//! `reasonrec broker-teardown`: delete the queues and exchanges of `broker.prefix`.

use super::connect_broker;
use crate::cli::BrokerTeardownArgs;
use reasonrec_core::Settings;
use std::process::ExitCode;

pub async fn teardown(settings: &Settings, a: BrokerTeardownArgs) -> anyhow::Result<ExitCode> {
    if !a.yes {
        anyhow::bail!(
            "broker-teardown deletes every queue of prefix {:?} with the messages in it; pass --yes",
            settings.broker.prefix
        );
    }
    let broker = connect_broker(settings, "reasonrec-teardown").await?;
    let channel = broker.channel().await?;
    let deleted = broker.topology().delete(&channel).await;
    broker.close().await;
    deleted?;
    tracing::info!(prefix = %settings.broker.prefix, "broker topology deleted");
    println!("deleted the queues and exchanges of prefix {}", settings.broker.prefix);
    Ok(ExitCode::SUCCESS)
}
