//! `opdbus-chain stats`: the running daemon's cache counters, over D-Bus.

use crate::Outcome;
use opdbus_blockchain::config::BusChoice;
use opdbus_blockchain::dbus::{BUS_NAME, OBJECT_PATH};
use std::collections::HashMap;
use std::process::ExitCode;
use zbus::zvariant::{OwnedValue, Value};

pub fn stats(bus: &str, json: bool) -> Outcome {
    let bus: BusChoice = bus.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let stats = runtime.block_on(fetch(&bus))?;
    let mut fields: Vec<(String, String, serde_json::Value)> = stats
        .into_iter()
        .map(|(name, value)| {
            let (text, json) = match &*value {
                Value::U64(v) => (v.to_string(), serde_json::json!(v)),
                Value::I64(v) => (v.to_string(), serde_json::json!(v)),
                Value::U32(v) => (v.to_string(), serde_json::json!(v)),
                Value::F64(v) => (format!("{v:.4}"), serde_json::json!(v)),
                other => (other.to_string(), serde_json::json!(other.to_string())),
            };
            (name, text, json)
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    if json {
        let object: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().map(|(name, _, v)| (name, v)).collect();
        println!("{}", serde_json::Value::Object(object));
    } else {
        for (name, text, _) in fields {
            println!("{name:<20} {text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch(bus: &BusChoice) -> Result<HashMap<String, OwnedValue>, String> {
    let builder = match bus {
        BusChoice::System => zbus::connection::Builder::system(),
        BusChoice::Session => zbus::connection::Builder::session(),
        BusChoice::Address(address) => zbus::connection::Builder::address(address.as_str()),
    }
    .map_err(|e| format!("cannot connect to the {bus} bus: {e}"))?;
    let connection = builder
        .build()
        .await
        .map_err(|e| format!("cannot connect to the {bus} bus: {e}"))?;
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "CacheStats",
            &(),
        )
        .await
        .map_err(|e| format!("CacheStats on the {bus} bus failed: {e}"))?;
    reply
        .body()
        .deserialize()
        .map_err(|e| format!("CacheStats returned something unexpected: {e}"))
}
