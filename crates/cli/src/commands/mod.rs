//! Subcommand implementations. Each returns the process exit code.

mod broker;
mod coordinator;
mod corpus;
mod data;
mod lifecycle;
mod load;
mod mock;
mod run;
mod train;
mod worker;

use crate::cli::{Cli, Command, CorpusCommand, DatasetCommand, LogFormatArg, RunCommand, TrainCommand};
use crate::telemetry;
use anyhow::Context;
use reasonrec_core::Settings;
use reasonrec_core::settings::{LogFormat, redact_url};
use reasonrec_store::Store;
use std::process::ExitCode;

pub async fn dispatch(args: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    let format = match args.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Human) => LogFormat::Human,
        None => settings.log.format,
    };
    telemetry::init(format, &settings.log.filter);
    match args.command {
        Command::Migrate => data::migrate(&settings).await,
        Command::Ingest(a) => data::ingest(&settings, a).await,
        Command::Dataset(DatasetCommand::Generate(a)) => data::generate(a),
        Command::Dataset(DatasetCommand::Stats(a)) => data::stats(&settings, a).await,
        Command::Run(RunCommand::Create(a)) => run::create(&settings, a).await,
        Command::Run(RunCommand::Status(a)) => run::status(&settings, a).await,
        Command::Run(RunCommand::RetryFailed(a)) => run::retry_failed(&settings, a).await,
        Command::Run(RunCommand::Cancel(a)) => run::cancel(&settings, a).await,
        Command::Run(RunCommand::List(a)) => lifecycle::list(&settings, a).await,
        Command::Run(RunCommand::Pause(a)) => lifecycle::pause(&settings, a).await,
        Command::Run(RunCommand::Resume(a)) => lifecycle::resume(&settings, a).await,
        Command::Run(RunCommand::Budget(a)) => lifecycle::budget(&settings, a).await,
        Command::Run(RunCommand::Prune(a)) => run::prune(&settings, a).await,
        Command::Coordinator => coordinator::coordinator(&settings).await,
        Command::Worker(a) => worker::worker(settings, a).await,
        Command::MockTeacher(a) => mock::serve(a).await,
        Command::BrokerTeardown(a) => broker::teardown(&settings, a).await,
        Command::TeacherLoad(a) => load::teacher_load(&settings, a).await,
        Command::Train(TrainCommand::Export(a)) => train::export(&settings, a).await,
        Command::Train(TrainCommand::Launch(a)) => train::launch(&settings, a).await,
        Command::Train(TrainCommand::Eval(a)) => train::eval(a),
        Command::Corpus(CorpusCommand::Snapshot(a)) => corpus::snapshot(&settings, a).await,
        Command::Corpus(CorpusCommand::Snapshots(a)) => corpus::snapshots(&settings, a).await,
        Command::Corpus(CorpusCommand::Diff(a)) => corpus::diff(&settings, a).await,
        Command::Corpus(CorpusCommand::Audit(a)) => corpus::audit(&settings, a).await,
        Command::Corpus(CorpusCommand::TextIndex(a)) => corpus::text_index(&settings, a).await,
    }
}

/// Connects to Postgres, saying where (without the password) when it fails.
pub(crate) async fn connect_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.database)
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", redact_url(&settings.database.url)))
}

/// Connects to RabbitMQ and declares the topology, saying where when it fails.
pub(crate) async fn connect_broker(settings: &Settings, name: &str) -> anyhow::Result<reasonrec_queue::Broker> {
    reasonrec_queue::Broker::connect(&settings.broker, name)
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", redact_url(&settings.broker.url)))
}
