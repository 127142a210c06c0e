//! Commands that ask a running opdbus-blockchaind over D-Bus.

use crate::Outcome;
use opdbus_blockchain::config::BusChoice;
use opdbus_blockchain::dbus::{BUS_NAME, OBJECT_PATH};
use std::collections::HashMap;
use std::process::ExitCode;
use zbus::zvariant::{OwnedValue, Value};

/// Runs `work` with a connection to `bus`, on a runtime of its own; a failure to start or to
/// connect is a one-line reason.
pub fn with_connection<T, F>(
    bus: &BusChoice,
    work: impl FnOnce(zbus::Connection) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    runtime.block_on(async {
        let connection = async { opdbus_blockchain::daemon::bus_builder(bus)?.build().await }
            .await
            .map_err(|e| format!("cannot connect to the {bus} bus: {e}"))?;
        work(connection).await
    })
}

/// Calls `method` with `body` on the daemon and returns its reply, or a one-line reason.
fn call<B, R>(bus: &BusChoice, method: &str, body: &B) -> Result<R, String>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
{
    with_connection(bus, |connection| async move {
        let reply = connection
            .call_method(Some(BUS_NAME), OBJECT_PATH, Some(BUS_NAME), method, body)
            .await
            .map_err(|e| describe_call_error(method, e))?;
        reply
            .body()
            .deserialize::<R>()
            .map_err(|e| format!("{method}: unexpected reply: {e}"))
    })
}

/// Calls `method` (no arguments) on the daemon and returns its `a{sv}` reply.
fn call_dict(bus: &BusChoice, method: &str) -> Result<HashMap<String, OwnedValue>, String> {
    call(bus, method, &())
}

fn describe_call_error(method: &str, err: zbus::Error) -> String {
    match err {
        zbus::Error::MethodError(name, Some(message), _) => format!("{method}: {message} ({name})"),
        zbus::Error::MethodError(name, None, _) => format!("{method}: {name}"),
        other => format!("{method}: {other}"),
    }
}

/// A D-Bus value as JSON (numbers, strings, booleans, arrays and dictionaries).
pub fn to_json(value: &Value<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Bool(b) => J::Bool(*b),
        Value::U8(n) => J::from(*n),
        Value::I16(n) => J::from(*n),
        Value::U16(n) => J::from(*n),
        Value::I32(n) => J::from(*n),
        Value::U32(n) => J::from(*n),
        Value::I64(n) => J::from(*n),
        Value::U64(n) => J::from(*n),
        Value::F64(n) => J::from(*n),
        Value::Str(s) => J::from(s.as_str()),
        Value::Value(inner) => to_json(inner),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Dict(dict) => J::Object(
            dict.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.as_str().to_owned(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        other => J::from(other.to_string()),
    }
}

fn dict_to_json(dict: &HashMap<String, OwnedValue>) -> serde_json::Map<String, serde_json::Value> {
    dict.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()
}

/// The daemon's dictionary as one JSON object, with `"ok": true` as every command's has.
fn print_ok(dict: serde_json::Map<String, serde_json::Value>) {
    let mut out = serde_json::Map::new();
    out.insert("ok".into(), true.into());
    out.extend(dict);
    println!("{}", serde_json::Value::Object(out));
}

/// `opdbus-chain numa`: the daemon's NUMA view, as text or JSON.
pub fn numa(bus: &BusChoice, json: bool) -> Outcome {
    let dict = dict_to_json(&call_dict(bus, "NumaInfo")?);
    if json {
        print_ok(dict);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |key: &str| match dict.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "-".into(),
    };
    let cpus = |key: &str| match dict.get(key) {
        Some(serde_json::Value::Array(list)) => {
            let cpus: Vec<u32> = list
                .iter()
                .filter_map(|v| v.as_u64().map(|n| n as u32))
                .collect();
            opdbus_blockchain::numa::format_cpu_list(&cpus)
        }
        _ => "-".into(),
    };
    let enabled = if text("numa_enabled") == "true" {
        "enabled"
    } else {
        "disabled"
    };
    println!("NUMA {enabled}: {}", text("reason"));
    println!(
        "optimal node {} ({})",
        text("optimal_node"),
        text("optimal_node_reason")
    );
    println!(
        "cache placement {}, writer memory policy {}",
        text("placement"),
        text("memory_policy")
    );
    println!(
        "writer CPUs {} (kernel reports {}): {}",
        cpus("writer_cpus"),
        cpus("writer_cpus_observed"),
        text("binding_reason")
    );
    println!(
        "{:>4}  {:<16} {:>14} {:>14}",
        "node", "cpus", "total MiB", "free MiB"
    );
    if let Some(serde_json::Value::Array(nodes)) = dict.get("nodes") {
        for node in nodes {
            let field = |k: &str| node.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let node_cpus = node.get("cpus").and_then(|v| v.as_str()).unwrap_or("-");
            let cpus_text = if node_cpus.is_empty() {
                "(none)"
            } else {
                node_cpus
            };
            let free = if node.get("memory_free_known").and_then(|v| v.as_bool()) == Some(false) {
                "unknown".to_owned()
            } else {
                (field("memory_free_kb") / 1024).to_string()
            };
            println!(
                "{:>4}  {:<16} {:>14} {:>14}",
                field("id"),
                cpus_text,
                field("memory_total_kb") / 1024,
                free
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `opdbus-chain similar` filters by.
pub struct SimilarArgs {
    pub query: String,
    pub k: u32,
    pub plugin: Option<String>,
    pub operation: Option<String>,
    pub uid: Option<u32>,
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
    pub json: bool,
}

/// `opdbus-chain similar`: blocks most like a given block or footprint.
pub fn similar(bus: &BusChoice, args: SimilarArgs) -> Outcome {
    let mut filter: HashMap<&str, Value<'_>> = HashMap::new();
    if let Some(plugin) = &args.plugin {
        filter.insert("plugin", Value::from(plugin.as_str()));
    }
    if let Some(operation) = &args.operation {
        filter.insert("operation", Value::from(operation.as_str()));
    }
    if let Some(uid) = args.uid {
        filter.insert("uid", Value::from(uid));
    }
    if let Some(since) = args.since_ns {
        filter.insert("since_ns", Value::from(since));
    }
    if let Some(until) = args.until_ns {
        filter.insert("until_ns", Value::from(until));
    }
    let matches: Vec<(u64, String, f64)> = call(
        bus,
        "FindSimilarFiltered",
        &(args.query.as_str(), args.k, filter),
    )?;
    for (height, hash, score) in &matches {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"height": height, "hash": hash, "score": score})
            );
        } else {
            println!("{height:>10}  {score:>7.4}  {hash}");
        }
    }
    if matches.is_empty() {
        eprintln!("no block matches");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `opdbus-chain stats`: the daemon's CacheStats, as a table or JSON.
pub fn stats(bus: &BusChoice, json: bool) -> Outcome {
    let dict = dict_to_json(&call_dict(bus, "CacheStats")?);
    if json {
        print_ok(dict);
        return Ok(ExitCode::SUCCESS);
    }
    let mut fields: Vec<_> = dict.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in fields {
        let text = match value.as_f64() {
            Some(v) if value.is_f64() => format!("{v:.4}"),
            _ => value.to_string(),
        };
        println!("{name:<20} {text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `opdbus-chain snapshot`: asks for a unified snapshot and prints the two paths (chain,
/// cache), one per line, or one JSON object naming them.
pub fn snapshot(bus: &BusChoice, json: bool) -> Outcome {
    let paths: Vec<String> = call(bus, "Snapshot", &())?;
    if json {
        let [chain, cache] = paths.as_slice() else {
            return Err(format!("Snapshot: expected two paths, got {paths:?}"));
        };
        // The name is the directory both sides sit in (.snapshots/<name>/chain).
        let name = std::path::Path::new(chain)
            .parent()
            .and_then(std::path::Path::file_name)
            .map(|name| name.to_string_lossy().into_owned());
        let out = serde_json::json!({
            "ok": true,
            "name": name,
            "chain": chain,
            "cache": cache,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    for path in paths {
        println!("{path}");
    }
    Ok(ExitCode::SUCCESS)
}
