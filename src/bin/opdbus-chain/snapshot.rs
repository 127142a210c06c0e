//! `opdbus-chain snapshot`: asks the running daemon for a unified snapshot over D-Bus.

use crate::Outcome;
use opdbus_blockchain::config::BusChoice;
use opdbus_blockchain::dbus::{BUS_NAME, OBJECT_PATH};
use std::process::ExitCode;

/// Calls `Snapshot()` and prints the two paths (chain, cache), one per line.
pub fn snapshot(bus: &BusChoice) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let paths = runtime.block_on(call_snapshot(bus))?;
    for path in paths {
        println!("{path}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn call_snapshot(bus: &BusChoice) -> Result<Vec<String>, String> {
    let connection = bus
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the {bus} bus: {e}"))?;
    let reply = connection
        .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), "Snapshot", &())
        .await
        .map_err(|e| match e {
            zbus::Error::MethodError(name, Some(message), _) => format!("{name}: {message}"),
            other => format!("Snapshot failed: {other}"),
        })?;
    reply
        .body()
        .deserialize()
        .map_err(|e| format!("unexpected reply to Snapshot: {e}"))
}
