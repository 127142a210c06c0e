//! `opdbus-chain report`: how many blocks, by plugin, operation, caller and day, over a
//! range, like aureport's summary. Offline, over the same range and filters as `log`.

use crate::log::{utc, Range};
use crate::Outcome;
use opdbus_blockchain::chain::block::Block;
use opdbus_blockchain::query;
use opdbus_blockchain::query::offline::OfflineReader;
use opdbus_blockchain::snapshot::utc::UtcDateTime;
use serde_json::json;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;

/// Counts over the matching blocks; every map's counts add up to `total`.
#[derive(Default)]
struct Counts {
    total: u64,
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    by_plugin: BTreeMap<String, u64>,
    by_operation: BTreeMap<String, u64>,
    /// (uid, unit); an unknown uid is `None`, an unknown unit empty.
    by_caller: BTreeMap<(Option<u32>, String), u64>,
    by_day: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, block: &Block) {
        self.total += 1;
        self.first.get_or_insert((block.height, block.timestamp_ns));
        self.last = Some((block.height, block.timestamp_ns));
        *self.by_plugin.entry(block.plugin.clone()).or_default() += 1;
        *self
            .by_operation
            .entry(block.operation.clone())
            .or_default() += 1;
        *self
            .by_caller
            .entry((block.caller.uid, block.caller.unit.clone()))
            .or_default() += 1;
        let t = UtcDateTime::from_unix((block.timestamp_ns / 1_000_000_000) as i64);
        *self
            .by_day
            .entry(format!("{:04}-{:02}-{:02}", t.year, t.month, t.day))
            .or_default() += 1;
    }

    fn json(&self) -> serde_json::Value {
        let callers: Vec<_> = self
            .by_caller
            .iter()
            .map(|((uid, unit), count)| json!({"uid": uid, "unit": unit, "count": count}))
            .collect();
        json!({
            "total": self.total,
            "first_height": self.first.map(|(h, _)| h),
            "last_height": self.last.map(|(h, _)| h),
            "first_timestamp_ns": self.first.map(|(_, t)| t),
            "last_timestamp_ns": self.last.map(|(_, t)| t),
            "by_plugin": self.by_plugin,
            "by_operation": self.by_operation,
            "by_caller": callers,
            "by_day": self.by_day,
        })
    }

    fn text(&self) -> String {
        let mut text = String::from("Summary\n=======\n");
        match (self.first, self.last) {
            (Some((first_h, first_t)), Some((last_h, last_t))) => text.push_str(&format!(
                "Blocks:  {} (heights {first_h} to {last_h})\nTime:    {} to {}\n",
                self.total,
                utc(first_t),
                utc(last_t)
            )),
            _ => text.push_str("Blocks:  0\n"),
        }
        let section = |text: &mut String, title: &str, column: &str, rows: Vec<(String, u64)>| {
            let mut rows = rows;
            rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            text.push_str(&format!("\n{title}\n{:>10}  {column}\n", "COUNT"));
            for (name, count) in rows {
                text.push_str(&format!(
                    "{count:>10}  {}\n",
                    crate::log::for_terminal(&name)
                ));
            }
        };
        let rows = |map: &BTreeMap<String, u64>| {
            map.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>()
        };
        section(&mut text, "By plugin", "PLUGIN", rows(&self.by_plugin));
        section(
            &mut text,
            "By operation",
            "OPERATION",
            rows(&self.by_operation),
        );
        let callers = self
            .by_caller
            .iter()
            .map(|((uid, unit), count)| {
                let uid = uid.map_or("-".into(), |u| u.to_string());
                let unit = if unit.is_empty() { "-" } else { unit };
                (format!("{uid:>10}  {unit}"), *count)
            })
            .collect();
        section(
            &mut text,
            "By caller",
            &format!("{:>10}  UNIT", "UID"),
            callers,
        );
        // Days read best in calendar order.
        text.push_str(&format!("\nBy day (UTC)\n{:>10}  DAY\n", "COUNT"));
        for (day, count) in &self.by_day {
            text.push_str(&format!("{count:>10}  {day}\n"));
        }
        text
    }
}

pub fn report(dir: &Path, range: &Range, json: bool) -> Outcome {
    let filter = range.filter()?;
    let reader = match OfflineReader::open(dir) {
        Ok(reader) => reader,
        Err(err) => return crate::log::failed(err),
    };
    let mut counts = Counts::default();
    let mut progress = crate::offline::progress("reading", dir);
    let mut examined = 0u64;
    let walked = query::walk(&reader, &filter, u64::MAX, |block| {
        counts.add(&block);
        examined += 1;
        progress(examined);
        ControlFlow::Continue(())
    });
    if let Err(err) = walked {
        return crate::log::failed(err);
    }
    if json {
        println!("{}", counts.json());
    } else {
        print!("{}", counts.text());
    }
    Ok(ExitCode::SUCCESS)
}
