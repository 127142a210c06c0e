//! The daemon: opens the chain, owns `org.opdbus.Blockchain` on the bus, tells systemd when it
//! is ready, and shuts down cleanly on SIGTERM/SIGINT (stop taking calls, drain and sync the
//! queue, release the name, exit 0).

use crate::chain::error::ChainError;
use crate::config::{BusChoice, Config};
use crate::dbus::{BlockchainObject, BUS_NAME, OBJECT_PATH};
use crate::service::{ChainOptions, OptimizedBlockchain};
use sd_notify::NotifyState;
use std::time::Duration;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the chain in {dir}: {source}")]
    Chain {
        dir: std::path::PathBuf,
        #[source]
        source: ChainError,
    },
    #[error("cannot connect to the {bus} bus: {source}")]
    Connect { bus: String, source: zbus::Error },
    #[error("cannot own {BUS_NAME} on the {bus} bus (is another daemon running, or does the bus policy forbid it?): {source}")]
    OwnName { bus: String, source: zbus::Error },
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("stopping so that systemd restarts the daemon and it recovers from disk: {0}")]
    StorageLatched(String),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let mut options = ChainOptions::new(&config.chain_dir);
    options.max_data_bytes = config.max_data_bytes;
    options.store.segment_bytes = config.segment_bytes;
    options.numa = config.numa_options();
    let chain = OptimizedBlockchain::with_options(options, config.cache_dir.clone())
        .await
        .map_err(|source| DaemonError::Chain {
            dir: config.chain_dir.clone(),
            source,
        })?;
    let (height, head) = chain.head();
    let recovery = chain.chain().recovery();
    tracing::info!(
        chain_dir = %config.chain_dir.display(),
        cache_dir = %config.cache_dir.display(),
        bus = %config.bus,
        max_data_bytes = config.max_data_bytes,
        segment_bytes = config.segment_bytes,
        height,
        head = %head,
        created = recovery.created,
        torn_bytes_cut = recovery.torn_bytes_cut,
        index_rebuilt = recovery.index_rebuilt,
        "chain opened"
    );

    let bus = config.bus.to_string();
    let builder = match &config.bus {
        BusChoice::System => zbus::connection::Builder::system(),
        BusChoice::Session => zbus::connection::Builder::session(),
        BusChoice::Address(address) => zbus::connection::Builder::address(address.as_str()),
    }
    .map_err(|source| DaemonError::Connect {
        bus: bus.clone(),
        source,
    })?;
    let object = BlockchainObject::new(chain.clone(), config.writer_uids.clone());
    let connection = builder
        .serve_at(OBJECT_PATH, object)
        .and_then(|b| b.name(BUS_NAME))
        .map_err(|source| DaemonError::Connect {
            bus: bus.clone(),
            source,
        })?
        .build()
        .await
        .map_err(|source| match source {
            zbus::Error::NameTaken | zbus::Error::FDO(_) => DaemonError::OwnName {
                bus: bus.clone(),
                source,
            },
            source => DaemonError::Connect {
                bus: bus.clone(),
                source,
            },
        })?;
    tracing::info!(bus = %bus, name = BUS_NAME, height, "serving");
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving, chain height {height}")),
    ]);

    let latched = tokio::select! {
        stopped = wait_for_stop_signal() => {
            stopped?;
            None
        }
        reason = chain.chain().storage_latched() => Some(reason),
    };
    if let Some(reason) = &latched {
        tracing::error!(%reason, "the chain store failed to flush and refuses all writes");
    }

    tracing::info!("stopping: no new calls, draining the write queue");
    notify(&[NotifyState::Stopping]);
    let _ = connection.release_name(BUS_NAME).await;
    let _ = connection
        .object_server()
        .remove::<BlockchainObject, _>(OBJECT_PATH)
        .await;
    chain.shutdown().await;
    // Let the calls the writer just answered send their replies.
    tokio::time::sleep(Duration::from_millis(100)).await;
    connection.graceful_shutdown().await;
    let (height, _) = chain.head();
    tracing::info!(height, "stopped");
    match latched {
        Some(reason) => Err(DaemonError::StorageLatched(reason)),
        None => Ok(()),
    }
}

async fn wait_for_stop_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// Tells systemd (when it started us with `Type=notify`); a no-op otherwise.
fn notify(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::warn!(%err, "cannot notify systemd");
    }
}

/// Logs to journald when systemd connected our output to the journal (`JOURNAL_STREAM`), to
/// stderr otherwise. `filter` is a tracing filter such as `info` or `opdbus_blockchain=debug`.
pub fn init_logging(filter: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|layer| layer.with_field_prefix(None));
    if let Some(journald) = journald {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
}
