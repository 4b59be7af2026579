//! `reasonrec broker-teardown`: delete the queues and exchanges of `broker.prefix`.

use crate::cli::BrokerTeardownArgs;
use anyhow::Context;
use reasonrec_core::Settings;
use reasonrec_core::settings::redact_url;
use std::process::ExitCode;

pub async fn teardown(settings: &Settings, a: BrokerTeardownArgs) -> anyhow::Result<ExitCode> {
    if !a.yes {
        anyhow::bail!(
            "broker-teardown deletes every queue of prefix {:?} with the messages in it; pass --yes",
            settings.broker.prefix
        );
    }
    // Not declared first: a topology whose arguments changed would refuse the declaration.
    // Deleting a queue or exchange that does not exist is not an error in RabbitMQ. Retry tiers
    // are the ones the current `broker.retry_delays_secs` names.
    let broker = reasonrec_queue::Broker::connect_undeclared(&settings.broker, "reasonrec-teardown")
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", redact_url(&settings.broker.url)))?;
    let channel = broker.channel().await?;
    let deleted = broker.topology().delete(&channel).await;
    broker.close().await;
    deleted?;
    tracing::info!(prefix = %settings.broker.prefix, "broker topology deleted");
    println!("deleted the queues and exchanges of prefix {}", settings.broker.prefix);
    Ok(ExitCode::SUCCESS)
}
