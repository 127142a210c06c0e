//! The daemon: opens the chain, owns `org.opdbus.Blockchain` on the bus, tells systemd when it
//! is ready, and shuts down cleanly on SIGTERM/SIGINT (stop taking calls, drain and sync the
//! queue, release the name, exit 0). SIGHUP re-reads the `--config` file and applies what can
//! change while running (log filter, snapshot interval, retention); it never stops the daemon.
//!
//! Before the chain is opened: the chain-id marker beside the chain directory is checked (a
//! missing chain where one was served is an error, never a fresh genesis; see
//! [`crate::marker`]), and the chain and cache directories and their parents must be owned by
//! the daemon's user or root and not writable by group or others ([`crate::files`]).
//!
//! systemd protocol (`Type=notify`): `READY=1` once the name is owned and the chain's tail was
//! checked on open; `STATUS=` with the chain height and cache hit rate, refreshed on every tick
//! (5 s, or half of a shorter `WatchdogSec=`); `WATCHDOG=1` on every tick only while the chain
//! writer is healthy (thread alive, store not latched), so a latched store gets the daemon
//! restarted and recovered from disk; `STOPPING=1` when a stop signal arrives.

use crate::config::{BusChoice, Config};
use crate::dbus::{BlockchainInterface, BlockchainObject, BUS_NAME, OBJECT_PATH};
use crate::journal;
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
        source: crate::service::ServiceError,
    },
    #[error("cannot connect to the {bus} bus: {source}")]
    Connect { bus: String, source: zbus::Error },
    #[error("cannot own {BUS_NAME} on the {bus} bus (is another daemon running, or does the bus policy forbid it?): {source}")]
    OwnName { bus: String, source: zbus::Error },
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot prepare the chain or cache directory: {0}")]
    Prepare(crate::btrfs::BtrfsError),
    #[error("stopping so that systemd restarts the daemon and it recovers from disk: {0}")]
    StorageLatched(String),
    #[error(transparent)]
    Marker(#[from] crate::marker::MarkerError),
    #[error(transparent)]
    UnsafeDir(#[from] crate::files::DirError),
    #[error("cannot start the replicas (OPDBUS_REPLICA_OF): {0}")]
    Replicas(String),
}

impl DaemonError {
    /// Logs why the daemon exits with status 1, once: a latched store was logged where it
    /// happened and at the stop, so only the other causes, all at start-up, are logged here.
    pub fn log(&self) {
        match self {
            DaemonError::StorageLatched(_) => {}
            err => tracing::error!(message_id = journal::START_FAILED, "{err}"),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    // First of all, so that a SIGHUP never takes the default action (terminate) once we run.
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    tracing::info!(
        bus = %config.bus,
        chain_dir = %config.chain_dir.display(),
        cache_dir = %config.cache_dir.display(),
        max_data_bytes = config.max_data_bytes,
        segment_bytes = config.segment_bytes,
        writer_uids = journal::list(&config.writer_uids),
        numa = config.numa,
        cache_placement = %config.cache_placement,
        memory_policy = %config.memory_policy,
        log = %config.log,
        "configuration: bus {}, chain {}, cache {}, numa {}, log {}",
        config.bus,
        config.chain_dir.display(),
        config.cache_dir.display(),
        if config.numa { "on" } else { "off" },
        config.log
    );
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let marker = crate::marker::ChainMarker::beside(&config.chain_dir);
    for dir in parents(&config) {
        if dir.exists() {
            crate::files::check_dir(&dir)?;
        }
    }
    let recorded = marker.check_before_open()?;
    prepare_dirs(&config).map_err(DaemonError::Prepare)?;
    for dir in parents(&config) {
        crate::files::check_dir(&dir)?;
    }
    crate::files::check_dir(&config.chain_dir)?;
    crate::files::check_dir(&config.cache_dir)?;
    share_dirs(&config);
    let mut options = ChainOptions::new(&config.chain_dir);
    options.max_data_bytes = config.max_data_bytes;
    options.store.segment_bytes = config.segment_bytes;
    options.numa = config.numa_options();
    options.predict = config.cache_predict;
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    options.transparency = config.transparency_options(credentials.as_deref());
    let chain = OptimizedBlockchain::with_cache(options, config.cache_options())
        .await
        .map_err(|source| DaemonError::Chain {
            dir: config.chain_dir.clone(),
            source,
        })?;
    if let Err(err) = marker.record_after_open(recorded) {
        chain.shutdown().await;
        return Err(err.into());
    }
    let leftovers = crate::snapshot::timeline::remove_incomplete(
        &crate::snapshot::layout::SnapshotLayout::new(&config.chain_dir, &config.cache_dir),
        Duration::ZERO,
    );
    if !leftovers.is_empty() {
        tracing::info!(
            removed = journal::list(leftovers.iter().map(|p| p.display())),
            "removed {} half-made snapshot(s) left by an interrupted Snapshot",
            leftovers.len()
        );
    }
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
        // A new chain's index is built, not rebuilt: not a repair to report.
        index_rebuilt = recovery.index_rebuilt && !recovery.created,
        "chain opened at height {height}, head {head}"
    );

    if let Some(transparency) = chain.transparency() {
        tracing::info!(
            TLOG_DIR = %transparency.dir().display(),
            ORIGIN = %transparency.origin(),
            VKEY = %transparency.verifying_key(),
            "transparency log in {}, origin {}, verifier key {}",
            transparency.dir().display(),
            transparency.origin(),
            transparency.verifying_key()
        );
    }

    let bus = config.bus.to_string();
    let daemon_bus = crate::dbus::socket::DaemonBus::new(&config.bus).map_err(|source| {
        DaemonError::Connect {
            bus: bus.clone(),
            source,
        }
    })?;
    let replicas = match crate::replica::run::Replicas::start(
        &config.replica_of,
        &config.replicas_dir,
        &config.witness_key,
        chain.numa_topology(),
        config
            .shared_cache
            .clone()
            .map(|url| (url, config.shared_cache_timeout)),
    ) {
        Ok(replicas) => replicas,
        Err(err) => {
            chain.shutdown().await;
            return Err(DaemonError::Replicas(err));
        }
    };
    let object = BlockchainObject::new(chain.clone(), config.writer_uids.clone())
        .with_replicas(replicas.clone());
    let in_flight = object.in_flight();
    let connected = daemon_bus.connect().await;
    let connection = connected
        .and_then(|builder| builder.serve_at(OBJECT_PATH, BlockchainInterface::new(object)))
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
    for ((name, index), status) in replicas.indexes().iter().zip(replicas.statuses()) {
        let path = crate::dbus::replica::object_path(name);
        let object = crate::dbus::replica::ReplicaChainObject::new(index.clone(), status.source);
        if let Err(err) = connection.object_server().at(path.as_str(), object).await {
            tracing::warn!(%err, path, "cannot serve a replica's copy on the bus");
        }
    }
    tracing::info!(
        message_id = journal::STARTED,
        bus = %bus,
        name = %BUS_NAME,
        height,
        "serving {BUS_NAME} on the {bus} bus"
    );
    let announcer = chain.transparency().map(|transparency| {
        tokio::spawn(crate::dbus::announce_checkpoints(
            connection.clone(),
            transparency.subscribe(),
        ))
    });
    let divergences = tokio::spawn(crate::dbus::announce_divergences(
        connection.clone(),
        replicas.subscribe(),
    ));
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(&chain)),
    ]);
    let watchdog = tokio::spawn(watch_health(chain.clone()));

    let (timeline_settings, timeline_changes) =
        tokio::sync::watch::channel((config.snapshot_interval, config.retention));
    let timeline = tokio::spawn(crate::snapshot::timeline::run(
        chain.snapshots().clone(),
        timeline_changes,
    ));

    // What the config sources say without the command-line flags: SIGHUP compares against it.
    let mut running = Config::load(config.file.as_deref(), |key| std::env::var(key).ok())
        .unwrap_or_else(|_| config.clone());
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let storage_latched = chain.chain().storage_latched();
    tokio::pin!(storage_latched);
    let latched = loop {
        tokio::select! {
            _ = term.recv() => break Err("SIGTERM"),
            _ = int.recv() => break Err("SIGINT"),
            _ = hangup.recv() => reload(&mut running, &timeline_settings),
            reason = &mut storage_latched => break Ok(reason),
        }
    };
    timeline.abort();
    // One record for the stop and its cause.
    let latched = match latched {
        Err(signal) => {
            tracing::info!(
                message_id = journal::STOPPING,
                reason = signal,
                in_flight = in_flight.count(),
                "{signal} received; stopping: no new calls, answering those in flight, draining \
                 the write queue"
            );
            None
        }
        Ok(reason) => {
            tracing::error!(
                message_id = journal::STOPPING,
                reason = %reason,
                in_flight = in_flight.count(),
                "stopping so that systemd restarts the daemon and it recovers from disk: the \
                 chain store refuses all writes since a write failed: {reason}"
            );
            Some(reason)
        }
    };
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    watchdog.abort();
    if let Some(announcer) = announcer {
        announcer.abort();
    }
    divergences.abort();
    // Off the runtime's workers: a thread may be in the middle of a round.
    let stopping = replicas.clone();
    let _ = tokio::task::spawn_blocking(move || stopping.stop(Duration::from_secs(2))).await;
    // From here on calls to the name find no owner. Calls the bus routed to us before are
    // ahead of the bus's reply to `flush_incoming` on our socket, so once it is answered every
    // one of them has reached our connection's queue for the object server. The object stays
    // until they have been answered: on the system bus nobody may call us once we own no name
    // (the policy allows sends to the name's owner only), so nothing new arrives meanwhile.
    // The writer still runs, so every call gets its block committed and its reply sent. A call
    // the object server has taken but not started is not counted yet: wait until none is in
    // flight across a short grace, twice in a row.
    let _ = connection.release_name(BUS_NAME).await;
    flush_incoming(&connection).await;
    // Bounded: on a laxer bus a client that keeps calling our unique name could keep calls in
    // flight forever.
    if tokio::time::timeout(CLOSE_GRACE, drain(&in_flight, &connection))
        .await
        .is_err()
    {
        tracing::warn!(
            "calls to our unique name kept arriving {} s after the stop; refusing them now",
            CLOSE_GRACE.as_secs()
        );
    }
    // Then the object goes, so calls to our unique name (possible on a laxer bus) are refused,
    // and what such a call started meanwhile is drained too.
    let _ = connection
        .object_server()
        .remove::<BlockchainInterface, _>(OBJECT_PATH)
        .await;
    drain(&in_flight, &connection).await;
    // Bounded, so that a client that keeps calling our unique name (or a task that keeps a
    // clone of the connection) cannot hold the stop until systemd's SIGKILL.
    if tokio::time::timeout(CLOSE_GRACE, connection.graceful_shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "the bus connection was still in use {} s after the stop; closing it anyway",
            CLOSE_GRACE.as_secs()
        );
    }
    chain.shutdown().await;
    let (height, head) = chain.head();
    tracing::info!(
        message_id = journal::STOPPED,
        height,
        head = %head,
        "stopped at height {height}"
    );
    match latched {
        Some(reason) => Err(DaemonError::StorageLatched(reason)),
        None => Ok(()),
    }
}

/// A connection to `bus`, not yet built (the daemon adds its object and name; a client builds it
/// as it is).
pub fn bus_builder(bus: &BusChoice) -> zbus::Result<zbus::connection::Builder<'static>> {
    match bus {
        BusChoice::System => zbus::connection::Builder::system(),
        BusChoice::Session => zbus::connection::Builder::session(),
        BusChoice::Address(address) => zbus::connection::Builder::address(address.as_str()),
    }
}

/// Returns once every message the bus sent us before this call has reached our connection: a
/// call to the bus driver itself (`org.freedesktop.DBus.GetId`, which every bus policy allows;
/// a `Peer.Ping` to ourselves is refused by the system bus once we own no name). The bus
/// writes its reply to our socket after everything it routed to us before, and our connection
/// reads its socket in order.
async fn flush_incoming(connection: &zbus::Connection) {
    if let Err(err) = connection
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetId",
            &(),
        )
        .await
    {
        tracing::warn!(%err, "cannot reach the bus to flush our queue; stopping after a pause");
        tokio::time::sleep(SETTLE).await;
    }
}

/// Waits until no call is in flight, across a round trip through the bus and [`SETTLE`].
async fn drain(in_flight: &crate::dbus::InFlight, connection: &zbus::Connection) {
    loop {
        in_flight.idle().await;
        flush_incoming(connection).await;
        tokio::time::sleep(SETTLE).await;
        if in_flight.count() == 0 {
            break;
        }
    }
}

/// SIGHUP: reads the config sources again and applies the keys that can change while running;
/// logs one line saying what was reloaded and what needs a restart. Never stops the daemon.
fn reload(
    running: &mut Config,
    timeline: &tokio::sync::watch::Sender<crate::snapshot::timeline::TimelineSettings>,
) {
    let Some(file) = running.file.clone() else {
        tracing::info!(
            "SIGHUP: nothing reloaded: the settings come from the environment and flags (no \
             --config FILE), which only a restart renews"
        );
        return;
    };
    let fresh = match Config::load(Some(&file), |key| std::env::var(key).ok()) {
        Ok(fresh) => fresh,
        Err(err) => {
            tracing::warn!(
                "SIGHUP: cannot reload {}: {err}; the running settings stay",
                file.display()
            );
            return;
        }
    };
    for warning in &fresh.warnings {
        tracing::warn!("SIGHUP: {warning}");
    }
    let (applied, restart): (Vec<_>, Vec<_>) = running
        .changed_keys(&fresh)
        .into_iter()
        .partition(|key| key.reload);
    let mut applied: Vec<&str> = applied.iter().map(|key| key.name).collect();
    let restart: Vec<&str> = restart.iter().map(|key| key.name).collect();
    // Config::load checked OPDBUS_LOG strictly, so this only fails on an internal error; the
    // filter is built now and swapped in after the summary line, which the running filter (not
    // the new one, which may be `error`) decides to show.
    let new_filter = if applied.contains(&"OPDBUS_LOG") {
        match tracing_subscriber::EnvFilter::try_new(&fresh.log) {
            Ok(filter) => Some(filter),
            Err(err) => {
                applied.retain(|key| *key != "OPDBUS_LOG");
                tracing::warn!(
                    "SIGHUP: OPDBUS_LOG={} is not a usable log filter ({err}); keeping {}",
                    fresh.log,
                    running.log
                );
                None
            }
        }
    } else {
        None
    };
    running.snapshot_interval = fresh.snapshot_interval;
    running.retention = fresh.retention;
    timeline.send_replace((running.snapshot_interval, running.retention));
    let summary = if applied.is_empty() {
        "nothing changed".to_owned()
    } else {
        format!("reloaded {}", applied.join(", "))
    };
    let restart = if restart.is_empty() {
        String::new()
    } else {
        format!("; {} need a restart to take effect", restart.join(", "))
    };
    tracing::info!(config = %file.display(), "SIGHUP: {summary} from {}{restart}", file.display());
    if let Some(filter) = new_filter {
        match set_log_filter(filter) {
            Ok(()) => running.log = fresh.log.clone(),
            Err(err) => tracing::warn!(
                "SIGHUP: cannot swap the log filter ({err}); keeping OPDBUS_LOG={}",
                running.log
            ),
        }
    }
}

/// The directories that hold the chain-id marker and the `.snapshots` of chain and cache.
fn parents(config: &Config) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = [&config.chain_dir, &config.cache_dir]
        .iter()
        .filter_map(|d| d.parent())
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_owned())
        .collect();
    dirs.dedup();
    dirs
}

/// Gives `OPDBUS_READ_GROUP` read access to the chain, tlog, cache and snapshot directories
/// (and hands them back to the daemon's own group when it is empty), before the chain is opened
/// so that every file made from now on inherits the group. An upgrade from private directories
/// ends shared. Never stops the start: a group that does not exist, or one the daemon's user is
/// not a member of (`EPERM`), is one warning and the directories stay private.
fn share_dirs(config: &Config) {
    use crate::files::Depth;
    let own = nix::unistd::getegid().as_raw();
    let layout = crate::snapshot::layout::SnapshotLayout::new(&config.chain_dir, &config.cache_dir);
    let mut roots = vec![
        (config.chain_dir.clone(), Depth::Tree),
        (config.cache_dir.clone(), Depth::Tree),
    ];
    // A tlog directory of its own is made now, so that it starts shared like the others.
    if let Some(tlog) = config.tlog_dir.as_ref().filter(|_| config.transparency) {
        if let Err(err) = crate::files::create_dir_all(tlog) {
            tracing::warn!("cannot make the tlog directory {}: {err}", tlog.display());
        }
        roots.push((tlog.clone(), Depth::Tree));
    }
    for snapshots in [layout.chain_snapshots(), layout.cache_snapshots()] {
        if !roots.iter().any(|(dir, _)| *dir == snapshots) {
            if let Err(err) = crate::files::create_dir_all(&snapshots) {
                tracing::warn!("cannot make {}: {err}", snapshots.display());
            }
            roots.push((snapshots, Depth::Entries));
        }
    }
    let share = |gid: u32| -> std::io::Result<u64> {
        let mut changed = 0;
        for (dir, depth) in &roots {
            if dir.is_dir() {
                changed += crate::files::share_with_group(dir, gid, *depth)?;
            }
        }
        Ok(changed)
    };
    let wanted = match &config.read_group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Some((name, group.gid.as_raw())),
            Ok(None) => {
                tracing::warn!(
                    "OPDBUS_READ_GROUP={name}: no such group; the chain stays readable by the \
                     daemon's user and root only"
                );
                None
            }
            Err(err) => {
                tracing::warn!(
                    "OPDBUS_READ_GROUP={name}: cannot look the group up ({err}); the chain stays \
                     readable by the daemon's user and root only"
                );
                None
            }
        },
    };
    let result = match wanted {
        Some((name, gid)) => match share(gid) {
            Ok(changed) => Ok((name.as_str(), changed)),
            Err(err) => {
                let hint = if err.kind() == std::io::ErrorKind::PermissionDenied {
                    format!(
                        " (the daemon's user must be a member: usermod -a -G {name} {})",
                        nix::unistd::User::from_uid(nix::unistd::geteuid())
                            .ok()
                            .flatten()
                            .map_or_else(|| "USER".to_owned(), |user| user.name)
                    )
                } else {
                    String::new()
                };
                tracing::warn!(
                    "cannot give group {name} read access: {err}{hint}; the chain stays \
                     readable by the daemon's user and root only"
                );
                share(own).map(|changed| ("the daemon's own group", changed))
            }
        },
        None => share(own).map(|changed| ("the daemon's own group", changed)),
    };
    match result {
        Ok((_, 0)) => {}
        Ok((group, changed)) => tracing::info!(
            READ_GROUP = group,
            CHANGED = changed,
            "gave {group} read access to {changed} directories and files"
        ),
        Err(err) => tracing::warn!("cannot set the group of the chain's directories: {err}"),
    }
}

/// What `systemctl status` shows next to the unit.
fn status_line(chain: &OptimizedBlockchain) -> String {
    let (height, _) = chain.head();
    let cache = chain.cache().stats();
    format!(
        "serving, chain height {height}, cache hit rate {:.1}% of {} reads",
        cache.hit_rate * 100.0,
        cache.hits + cache.misses
    )
}

/// Refreshes `STATUS=` and pings the watchdog while the writer is healthy; runs until aborted.
async fn watch_health(chain: OptimizedBlockchain) {
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let period = if watchdog {
        Duration::from_micros(watchdog_usec / 2).min(STATUS_PERIOD)
    } else {
        STATUS_PERIOD
    };
    let mut ticks = tokio::time::interval(period.max(MIN_TICK));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = HealthWatch::new(watchdog);
    loop {
        ticks.tick().await;
        let tick = watch.tick(chain.writer_health().map_err(|e| e.to_string()), || {
            status_line(&chain)
        });
        if tick.ping {
            notify(&[NotifyState::Watchdog]);
        }
        if let Some(status) = &tick.status {
            notify(&[NotifyState::Status(status)]);
        }
    }
}

/// What one health tick tells systemd.
#[derive(Debug, PartialEq, Eq)]
struct Tick {
    /// Send `WATCHDOG=1`.
    ping: bool,
    /// Send this `STATUS=` (only when it changed).
    status: Option<String>,
}

/// The watchdog decision, apart from timers and sockets: ping only while the writer is healthy.
struct HealthWatch {
    watchdog: bool,
    last_status: String,
    unhealthy: bool,
}

impl HealthWatch {
    fn new(watchdog: bool) -> Self {
        HealthWatch {
            watchdog,
            last_status: String::new(),
            unhealthy: false,
        }
    }

    fn tick(&mut self, health: Result<(), String>, serving: impl FnOnce() -> String) -> Tick {
        let (ping, status) = match health {
            Ok(()) => {
                self.unhealthy = false;
                (self.watchdog, serving())
            }
            Err(reason) => {
                if !self.unhealthy {
                    tracing::error!(
                        %reason,
                        "the chain writer is unhealthy; no more watchdog pings, so systemd \
                         restarts the daemon"
                    );
                    self.unhealthy = true;
                }
                (false, format!("degraded: {reason}"))
            }
        };
        let status = (status != self.last_status).then(|| {
            self.last_status = status.clone();
            status
        });
        Tick { ping, status }
    }
}

/// How long the stop waits, after the last call in flight, for a call that was dispatched but
/// had not started.
const SETTLE: Duration = Duration::from_millis(50);
/// How long the stop waits for the bus connection to be let go (below the unit's
/// `TimeoutStopSec=30s`).
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How often `STATUS=` is refreshed (and the watchdog pinged, when systemd asks for it less
/// often).
const STATUS_PERIOD: Duration = Duration::from_secs(5);
/// A floor for the tick, whatever `WATCHDOG_USEC` says.
const MIN_TICK: Duration = Duration::from_millis(100);

/// Chain and cache directories become btrfs subvolumes when they are absent and their parent
/// is on btrfs (so that they can be snapshotted); plain directories otherwise.
fn prepare_dirs(config: &Config) -> Result<(), crate::btrfs::BtrfsError> {
    use crate::snapshot::layout::{prepare_dir, DirKind};
    for dir in [&config.chain_dir, &config.cache_dir] {
        let kind = prepare_dir(dir)?;
        if kind == DirKind::Plain && crate::btrfs::is_btrfs(dir) {
            tracing::warn!(
                dir = %dir.display(),
                "on btrfs but not a subvolume: snapshots fall back to hard-link copies and cannot \
                 be sent as backups (see docs/snapshots.md to convert it)"
            );
        }
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
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    // Field names as we write them (BLOCK_HEIGHT, PLUGIN, …), without the default `F_` prefix,
    // so that `journalctl PLUGIN=network` finds them.
    let journald = stderr_is_journal()
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|layer| {
            // Priorities as syslog reads them (the crate's default shifts each level one up:
            // info as notice, debug as info), so `journalctl -p info` leaves per-block records out.
            let mut priorities = tracing_journald::PriorityMappings::new();
            priorities.info = tracing_journald::Priority::Informational;
            priorities.debug = tracing_journald::Priority::Debug;
            layer
                .with_field_prefix(None)
                .with_priority_mappings(priorities)
        });
    if let Some(journald) = journald {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .fmt_fields(journal::StderrFields),
            )
            .init();
    }
}

/// The log filter's reload handle, set once by [`init_logging`].
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Replaces the log filter (SIGHUP).
fn set_log_filter(filter: tracing_subscriber::EnvFilter) -> Result<(), String> {
    LOG_FILTER
        .get()
        .ok_or_else(|| "logging was not set up by init_logging".to_owned())?
        .reload(filter)
        .map_err(|e| e.to_string())
}

/// Whether stderr is the journal stream systemd gave us: `JOURNAL_STREAM` is `device:inode` of
/// that stream, and a child that inherited the variable but not the stream must not use it.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(metadata) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    device.parse() == Ok(metadata.dev()) && inode.parse() == Ok(metadata.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_only_while_the_writer_is_healthy() {
        let mut watch = HealthWatch::new(true);
        let serving = || "serving, chain height 3".to_owned();
        assert_eq!(
            watch.tick(Ok(()), serving),
            Tick {
                ping: true,
                status: Some("serving, chain height 3".into())
            }
        );
        // Same status: not sent again; the ping is.
        assert_eq!(
            watch.tick(Ok(()), serving),
            Tick {
                ping: true,
                status: None
            }
        );
        let latched = || Err("the store is latched: fdatasync failed".to_owned());
        assert_eq!(
            watch.tick(latched(), serving),
            Tick {
                ping: false,
                status: Some("degraded: the store is latched: fdatasync failed".into())
            }
        );
        assert_eq!(
            watch.tick(latched(), serving),
            Tick {
                ping: false,
                status: None
            }
        );
    }

    #[test]
    fn without_a_watchdog_only_the_status_is_sent() {
        let mut watch = HealthWatch::new(false);
        let tick = watch.tick(Ok(()), || "serving, chain height 0".to_owned());
        assert!(!tick.ping);
        assert_eq!(tick.status.as_deref(), Some("serving, chain height 0"));
    }
}
