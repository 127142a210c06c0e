//! `opdbus-chain log` (alias `tail`): find and follow blocks, as `journalctl` does for the
//! journal; and the range and filter options `report` shares.
//!
//! Offline: reads the chain directory with `query::offline::OfflineReader` (the index file in
//! place, a binary search on heights for `--since`). `--follow` polls the segments, so a
//! reader needs only read access to the directory, not bus rights.

use crate::offline::indent_json;
use crate::Outcome;
use clap::{Args, ValueEnum};
use opdbus_blockchain::chain::block::{parse_hash, Block, Caller};
use opdbus_blockchain::chain::error::ChainError;
use opdbus_blockchain::config::BusChoice;
use opdbus_blockchain::dbus::{QueryBlock, BUS_NAME, OBJECT_PATH};
use opdbus_blockchain::footprint;
use opdbus_blockchain::query::offline::OfflineReader;
use opdbus_blockchain::query::{self, BlockSource, Filter};
use opdbus_blockchain::snapshot::utc::UtcDateTime;
use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often `--follow` looks for new blocks.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Without `-n` and without a range, `log` prints the newest this many (as `tail` always did).
const DEFAULT_LINES: u64 = 10;

/// Which blocks: the options `log` and `report` share.
#[derive(Args, Debug, Clone)]
pub struct Range {
    /// Only blocks at or after TIME (UTC): "2026-12-04 10:00", "2026-12-04 10:00:30",
    /// "2026-12-04", "10:00" (today), yesterday, today, tomorrow, now, a time relative to now
    /// ("-1h", "+30min", "-2d", "-90s", "1h ago") or "@1733400000" (Unix seconds). Found by a
    /// binary search on heights, so it costs the same on any length of chain.
    #[arg(short = 'S', long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Only blocks at or before TIME (UTC; the forms of --since).
    #[arg(short = 'U', long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Only blocks of this plugin (exact name, e.g. network).
    #[arg(long, value_name = "NAME")]
    pub plugin: Option<String>,
    /// Only blocks of this operation (exact name, e.g. create).
    #[arg(long, value_name = "NAME")]
    pub operation: Option<String>,
    /// Only blocks added by a caller with this uid.
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Only blocks added by a caller running in this systemd unit (e.g. op-dbus.service).
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// Only blocks in this height range: A..B (both included), A.. (from A on), ..B (up to B)
    /// or A (that block alone).
    #[arg(long, value_name = "A..B", value_parser = parse_heights)]
    pub height: Option<(Option<u64>, Option<u64>)>,
}

impl Range {
    /// Whether a range (not only a field filter) was given.
    fn bounded(&self) -> bool {
        self.since.is_some() || self.until.is_some() || self.height.is_some()
    }

    /// The filter these options describe, times read against the clock now.
    pub fn filter(&self) -> Result<Filter, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let time = |text: &Option<String>, option: &str| {
            text.as_deref()
                .map(|t| query::parse_time(t, now).map_err(|e| format!("--{option}: {e}")))
                .transpose()
        };
        let (from_height, to_height) = self.height.unwrap_or((None, None));
        let filter = Filter {
            since_ns: time(&self.since, "since")?,
            until_ns: time(&self.until, "until")?,
            plugin: self.plugin.clone(),
            operation: self.operation.clone(),
            uid: self.uid,
            unit: self.unit.clone(),
            from_height,
            to_height,
        };
        filter.check().map_err(|e| {
            e.replace("since_ns", "--since")
                .replace("until_ns", "--until")
                .replace("from_height", "--height from")
                .replace("to_height", "to")
        })?;
        Ok(filter)
    }
}

/// `A..B`, `A..`, `..B` or `A`.
fn parse_heights(text: &str) -> Result<(Option<u64>, Option<u64>), String> {
    let number = |s: &str| -> Result<Option<u64>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| format!("'{s}' is not a height (a whole number from 0)"))
    };
    match text.split_once("..") {
        Some((from, to)) => {
            let range = (number(from.trim())?, number(to.trim())?);
            if let (Some(from), Some(to)) = range {
                if from > to {
                    return Err(format!("{text}: the range ends before it starts"));
                }
            }
            Ok(range)
        }
        None if text.trim().is_empty() => Err("give A..B, A.., ..B or a height".into()),
        None => {
            let height = number(text.trim())?;
            Ok((height, height))
        }
    }
}

/// How `log` prints blocks.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A table: height, time, plugin, operation, caller (uid and unit), hash prefix, data.
    Short,
    /// One JSON object per line with every field, the caller's uid, pid, bus name and unit
    /// included (as `get` prints a block).
    Json,
    /// The JSON objects indented for reading, one after the other.
    JsonPretty,
    /// KEY=VALUE lines per block (HEIGHT, TIMESTAMP_NS, __REALTIME_TIMESTAMP, HASH, PREV_HASH,
    /// PLUGIN, OPERATION, CALLER_UID, CALLER_PID, CALLER_BUS_NAME, CALLER_UNIT, DATA), blocks
    /// separated by an empty line (as journalctl -o export).
    Export,
}

/// How many blocks `-n` asks for.
#[derive(Clone, Copy, Debug)]
pub enum Lines {
    Count(u64),
    All,
}

pub fn parse_lines(text: &str) -> Result<Lines, String> {
    match text {
        "all" => Ok(Lines::All),
        n => n
            .parse()
            .map(Lines::Count)
            .map_err(|_| format!("'{n}' is neither a count of blocks nor 'all'")),
    }
}

/// `log`'s options besides the range and the chain directory.
pub struct LogArgs {
    pub lines: Option<Lines>,
    pub follow: bool,
    pub output: Output,
    pub reverse: bool,
    /// Ask the daemon on this bus instead of reading the directory.
    pub bus: Option<BusChoice>,
}

/// A chain error met while reading: damage is exit 1, anything else could not run (2).
pub fn failed(err: ChainError) -> Outcome {
    match err {
        err @ ChainError::Corrupted { .. } => {
            eprintln!("opdbus-chain: {err}");
            Ok(ExitCode::FAILURE)
        }
        other => Err(other.to_string()),
    }
}

pub fn log(dir: &Path, range: &Range, args: LogArgs) -> Outcome {
    if let Some(bus) = &args.bus {
        return log_over_bus(&bus.clone(), range, args);
    }
    let filter = range.filter()?;
    let mut reader = match OfflineReader::open(dir) {
        Ok(reader) => reader,
        Err(err) => return failed(err),
    };
    let mut out = Printer::new(args.output);
    let lines = match args.lines {
        Some(lines) => lines,
        None if range.bounded() => Lines::All,
        None => Lines::Count(DEFAULT_LINES),
    };
    let shown = match (lines, args.reverse) {
        (Lines::Count(n), reverse) => query::newest(&reader, &filter, n).map(|mut blocks| {
            if reverse {
                blocks.reverse();
            }
            blocks.into_iter().try_for_each(|block| out.print(&block))
        }),
        (Lines::All, false) => query::walk(&reader, &filter, u64::MAX, |block| out.print(&block))
            .map(|_| ControlFlow::Continue(())),
        (Lines::All, true) => query::walk_back(&reader, &filter, |block| out.print(&block))
            .map(|()| ControlFlow::Continue(())),
    };
    match shown {
        Err(err) => return failed(err),
        // stdout was closed (piped into head): done.
        Ok(ControlFlow::Break(())) => return Ok(ExitCode::SUCCESS),
        Ok(ControlFlow::Continue(())) => {}
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    if out.flush().is_break() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown_to = reader.head_height();
    loop {
        std::thread::sleep(FOLLOW_POLL);
        if let Err(err) = reader.advance() {
            return failed(err);
        }
        let head = reader.head_height();
        for height in shown_to + 1..=head {
            let block = match reader.block_at(height) {
                Ok(Some(block)) => block,
                Ok(None) => break,
                Err(err) => return failed(err),
            };
            if filter.matches(&block) && out.print(&block).is_break() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        shown_to = head;
        if out.flush().is_break() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// `log --bus`: the same over the daemon's `Query` (and `BlockAdded` for `--follow`), for a
/// user who may read the bus but not the chain directory.
pub fn log_over_bus(bus: &BusChoice, range: &Range, args: LogArgs) -> Outcome {
    let filter = range.filter()?;
    let lines = match args.lines {
        Some(lines) => lines,
        None if range.bounded() => Lines::All,
        None => Lines::Count(DEFAULT_LINES),
    };
    crate::online::with_connection(bus, |connection| async move {
        // Subscribed before the first Query, so that no block added meanwhile is missed.
        let added = if args.follow {
            let rule = opdbus_blockchain::dbus::block_added_rule().map_err(|e| e.to_string())?;
            let stream = zbus::MessageStream::for_match_rule(rule, &connection, None)
                .await
                .map_err(|e| format!("cannot subscribe to BlockAdded: {e}"))?;
            // Signals are read as they come, by a task of their own: zbus stops reading the
            // connection (Query's replies too) while a stream's queue is full.
            let added = std::sync::Arc::new(tokio::sync::Notify::new());
            tokio::spawn(notify_each(stream, added.clone()));
            // The daemon emits BlockAdded only while someone is subscribed. A daemon from
            // before Subscribe emits it always; when the call is refused (too many
            // subscribers, an older bus policy), the 1 s poll below still follows, and says so.
            let subscribed = connection
                .call_method(
                    Some(BUS_NAME),
                    OBJECT_PATH,
                    Some(BUS_NAME),
                    "Subscribe",
                    &(),
                )
                .await;
            match subscribed {
                Err(zbus::Error::MethodError(name, message, _))
                    if name.as_str() != "org.freedesktop.DBus.Error.UnknownMethod" =>
                {
                    eprintln!(
                        "opdbus-chain: not subscribed to BlockAdded ({name}: {}); \
                         looking for new blocks once a second",
                        message.unwrap_or_default()
                    );
                }
                _ => {}
            }
            Some(added)
        } else {
            None
        };
        let mut out = Printer::new(args.output);
        let online = Online {
            connection: &connection,
            filter: &filter,
        };
        let mut next = match lines {
            Lines::All => {
                let mut blocks = Vec::new();
                let next = online
                    .each(filter.from_height, filter.to_height, |block| {
                        if args.reverse {
                            blocks.push(block);
                            ControlFlow::Continue(())
                        } else {
                            out.print(&block)
                        }
                    })
                    .await?;
                for block in blocks.iter().rev() {
                    if out.print(block).is_break() {
                        break;
                    }
                }
                next
            }
            Lines::Count(n) => {
                let (mut blocks, next) = online.newest(n).await?;
                if args.reverse {
                    blocks.reverse();
                }
                for block in &blocks {
                    if out.print(block).is_break() {
                        break;
                    }
                }
                next
            }
        };
        let Some(added) = added else {
            return Ok(ExitCode::SUCCESS);
        };
        loop {
            if out.flush().is_break() {
                return Ok(ExitCode::SUCCESS);
            }
            // A signal says a block was added; the timeout covers a signal the bus dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), added.notified()).await;
            let mut closed = false;
            next = online
                .each(Some(next), filter.to_height, |block| {
                    let flow = out.print(&block);
                    closed |= flow.is_break();
                    flow
                })
                .await?;
            if closed {
                return Ok(ExitCode::SUCCESS);
            }
        }
    })
}

/// Wakes `added` for each message of `stream` (one wake-up is kept while nobody waits).
async fn notify_each(mut stream: zbus::MessageStream, added: std::sync::Arc<tokio::sync::Notify>) {
    while opdbus_blockchain::dbus::next_message(&mut stream)
        .await
        .is_some()
    {
        added.notify_one();
    }
}

/// Query calls with one filter.
struct Online<'a> {
    connection: &'a zbus::Connection,
    filter: &'a Filter,
}

impl Online<'_> {
    /// Calls `on_block` with each matching block from `from` to `to`, page by page; returns the
    /// height after the last one examined.
    async fn each(
        &self,
        from: Option<u64>,
        to: Option<u64>,
        mut on_block: impl FnMut(Block) -> ControlFlow<()>,
    ) -> Result<u64, String> {
        use zbus::zvariant::Value;
        let mut from = from;
        loop {
            let mut dict: HashMap<&str, Value<'_>> = HashMap::new();
            let f = self.filter;
            if let Some(t) = f.since_ns {
                dict.insert("since_ns", t.into());
            }
            if let Some(t) = f.until_ns {
                dict.insert("until_ns", t.into());
            }
            if let Some(p) = &f.plugin {
                dict.insert("plugin", p.as_str().into());
            }
            if let Some(o) = &f.operation {
                dict.insert("operation", o.as_str().into());
            }
            if let Some(uid) = f.uid {
                dict.insert("uid", uid.into());
            }
            if let Some(unit) = &f.unit {
                dict.insert("unit", unit.as_str().into());
            }
            if let Some(h) = from {
                dict.insert("from_height", h.into());
            }
            if let Some(h) = to {
                dict.insert("to_height", h.into());
            }
            let reply = self.query(&dict).await?;
            let (blocks, next, complete): (Vec<QueryBlock>, u64, bool) = reply
                .body()
                .deserialize()
                .map_err(|e| format!("Query: unexpected reply: {e}"))?;
            for block in blocks {
                if on_block(from_query(block)).is_break() {
                    return Ok(next);
                }
            }
            if complete {
                return Ok(next);
            }
            from = Some(next);
        }
    }

    /// One Query call. The daemon refuses one with `LimitsExceeded` while the same uid has two
    /// expensive calls in progress (other `log --bus` runs of the user, say): that is retried
    /// for up to 10 s.
    async fn query(
        &self,
        dict: &HashMap<&str, zbus::zvariant::Value<'_>>,
    ) -> Result<zbus::Message, String> {
        let mut waited = Duration::ZERO;
        loop {
            match self
                .connection
                .call_method(
                    Some(BUS_NAME),
                    OBJECT_PATH,
                    Some(BUS_NAME),
                    "Query",
                    &(dict, 1000u32),
                )
                .await
            {
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.opdbus.Blockchain.Error.LimitsExceeded"
                        && waited < Duration::from_secs(10) =>
                {
                    let pause = Duration::from_millis(50);
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                reply => return reply.map_err(|e| format!("Query: {e}")),
            }
        }
    }

    /// The newest `n` matching blocks, oldest first, found in windows growing towards the
    /// past; and the height after the head.
    async fn newest(&self, n: u64) -> Result<(Vec<Block>, u64), String> {
        let reply = self
            .connection
            .call_method(
                Some(BUS_NAME),
                OBJECT_PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(BUS_NAME, "Height"),
            )
            .await
            .map_err(|e| format!("reading the height: {e}"))?;
        let head: u64 = reply
            .body()
            .deserialize::<zbus::zvariant::OwnedValue>()
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or("reading the height: unexpected reply")?;
        let lower = self.filter.from_height.unwrap_or(0);
        let mut to = self.filter.to_height.unwrap_or(head).min(head);
        let mut width = n.max(64).saturating_mul(4);
        let mut found: Vec<Block> = Vec::new();
        while n > 0 && to >= lower {
            let from = to.saturating_sub(width - 1).max(lower);
            let mut chunk = Vec::new();
            self.each(Some(from), Some(to), |block| {
                chunk.push(block);
                ControlFlow::Continue(())
            })
            .await?;
            chunk.append(&mut found);
            found = chunk;
            if found.len() as u64 >= n || from == lower {
                break;
            }
            to = from - 1;
            width = width.saturating_mul(4);
        }
        let skip = found.len().saturating_sub(n as usize);
        Ok((found.split_off(skip), head + 1))
    }
}

fn from_query(b: QueryBlock) -> Block {
    let (height, timestamp_ns, hash, prev_hash, plugin, operation, uid, pid, bus_name, unit, data) =
        b;
    Block {
        height,
        timestamp_ns,
        prev_hash: parse_hash(&prev_hash).unwrap_or_default(),
        caller: Caller::from_wire(uid, pid, bus_name, unit),
        plugin,
        operation,
        data,
        hash: parse_hash(&hash).unwrap_or_default(),
    }
}

/// Prints blocks in one output format; `Break` once stdout is closed.
pub struct Printer {
    output: Output,
    out: std::io::BufWriter<std::io::Stdout>,
    header_done: bool,
}

impl Printer {
    pub fn new(output: Output) -> Self {
        Printer {
            output,
            out: std::io::BufWriter::new(std::io::stdout()),
            header_done: false,
        }
    }

    pub fn print(&mut self, block: &Block) -> ControlFlow<()> {
        let text = match self.output {
            Output::Short => {
                let mut text = String::new();
                if !self.header_done {
                    self.header_done = true;
                    text = format!(
                        "{:>8}  {:<24}  {:<16}  {:<16}  {:<24}  {:<16}  DATA\n",
                        "HEIGHT", "TIME (UTC)", "PLUGIN", "OPERATION", "CALLER (UID UNIT)", "HASH"
                    );
                }
                text + &table_row(block) + "\n"
            }
            Output::Json => block.to_json() + "\n",
            Output::JsonPretty => pretty(block) + "\n",
            Output::Export => {
                let mut bytes = export(block);
                bytes.push(b'\n');
                return self.write(&bytes);
            }
        };
        self.write(text.as_bytes())
    }

    fn write(&mut self, bytes: &[u8]) -> ControlFlow<()> {
        if self.out.write_all(bytes).is_err() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    pub fn flush(&mut self) -> ControlFlow<()> {
        match self.out.flush() {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

fn pretty(block: &Block) -> String {
    // Data that breaks the format's rules (an older writer's) is shown as stored.
    match footprint::check_data_json(&block.data) {
        Ok(()) => indent_json(&block.to_json()),
        Err(_) => block.to_json(),
    }
}

/// Journal-export-like fields: `KEY=VALUE` lines, or for a value holding a newline the
/// export format's binary form (the key, a newline, its length as 64-bit little-endian, the
/// bytes, a newline); unknown caller fields are left out.
fn export(block: &Block) -> Vec<u8> {
    let mut fields: Vec<(&str, String)> = vec![
        (
            "__REALTIME_TIMESTAMP",
            (block.timestamp_ns / 1000).to_string(),
        ),
        ("HEIGHT", block.height.to_string()),
        ("TIMESTAMP_NS", block.timestamp_ns.to_string()),
        ("HASH", block.hash_hex()),
        ("PREV_HASH", hex::encode(block.prev_hash)),
        ("PLUGIN", block.plugin.clone()),
        ("OPERATION", block.operation.clone()),
    ];
    if let Some(uid) = block.caller.uid {
        fields.push(("CALLER_UID", uid.to_string()));
    }
    if let Some(pid) = block.caller.pid {
        fields.push(("CALLER_PID", pid.to_string()));
    }
    if !block.caller.bus_name.is_empty() {
        fields.push(("CALLER_BUS_NAME", block.caller.bus_name.clone()));
    }
    if !block.caller.unit.is_empty() {
        fields.push(("CALLER_UNIT", block.caller.unit.clone()));
    }
    fields.push(("DATA", block.data.clone()));
    let mut bytes = Vec::new();
    for (key, value) in fields {
        bytes.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            bytes.push(b'\n');
            bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            bytes.push(b'=');
        }
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

fn table_row(block: &Block) -> String {
    let mut data = for_terminal(&block.data.chars().take(60).collect::<String>());
    if block.data.chars().nth(60).is_some() {
        data.push('…');
    }
    format!(
        "{:>8}  {:<24}  {:<16}  {:<16}  {:<24}  {:<16}  {data}",
        block.height,
        utc(block.timestamp_ns),
        for_terminal(&block.plugin),
        for_terminal(&block.operation),
        caller(block),
        &block.hash_hex()[..16],
    )
}

/// `uid unit` of the caller, `-` for what is unknown; a long unit name is cut with `…`.
fn caller(block: &Block) -> String {
    let uid = block.caller.uid.map_or("-".into(), |uid| uid.to_string());
    let unit = if block.caller.unit.is_empty() {
        "-".to_string()
    } else {
        for_terminal(&block.caller.unit)
    };
    let mut text = format!("{uid} {unit}");
    if text.chars().count() > 24 {
        text = text.chars().take(23).collect::<String>() + "…";
    }
    text
}

/// `text` with control, invisible and reordering characters escaped (`\u{202e}`), so a line
/// shows what it holds: data strings may hold them, and names in chains written before the
/// names' safe set did.
pub fn for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if footprint::is_hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for nanoseconds since the epoch.
pub fn utc(ns: u64) -> String {
    let t = UtcDateTime::from_unix((ns / 1_000_000_000) as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        ns / 1_000_000 % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use opdbus_blockchain::chain::block::{Caller, ZERO_HASH};

    #[test]
    fn hidden_characters_are_escaped_for_the_terminal() {
        assert_eq!(for_terminal("net\u{200b}work"), "net\\u{200b}work");
        assert_eq!(for_terminal("a\u{202e}b\nc"), "a\\u{202e}b\\u{a}c");
        assert_eq!(for_terminal("réseau 😀"), "réseau 😀");
    }

    #[test]
    fn block_times_show_as_utc_with_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_764_075_900_123_456_789), "2025-11-25T13:05:00.123Z");
        assert_eq!(utc(951_782_400_999_000_000), "2000-02-29T00:00:00.999Z");
    }

    #[test]
    fn height_ranges_take_every_form() {
        assert_eq!(parse_heights("5..9"), Ok((Some(5), Some(9))));
        assert_eq!(parse_heights("5.."), Ok((Some(5), None)));
        assert_eq!(parse_heights("..9"), Ok((None, Some(9))));
        assert_eq!(parse_heights("7"), Ok((Some(7), Some(7))));
        assert_eq!(parse_heights(".."), Ok((None, None)));
        for bad in ["9..5", "a..b", "-1..", "", "1...2"] {
            assert!(parse_heights(bad).is_err(), "{bad}");
        }
    }

    fn block(unit: &str, data: &str) -> Block {
        Block::new(
            3,
            1_700_000_000_123_000_000,
            ZERO_HASH,
            Caller {
                uid: Some(1000),
                pid: Some(42),
                bus_name: ":1.9".into(),
                unit: unit.into(),
            },
            "network".into(),
            "create".into(),
            data.into(),
        )
    }

    #[test]
    fn the_table_shows_the_caller() {
        let row = table_row(&block("op-dbus.service", "{}"));
        assert!(row.contains("1000 op-dbus.service"), "{row}");
        let row = table_row(&block("", "{}"));
        assert!(row.contains("1000 -"), "{row}");
        let row = table_row(&block(&"x".repeat(40), "{}"));
        assert!(row.contains(&format!("1000 {}…", "x".repeat(18))), "{row}");
    }

    #[test]
    fn export_is_key_value_lines_with_binary_values_for_newlines() {
        let text =
            String::from_utf8(export(&block("op-dbus.service", r#"{"a":1}"#))).expect("text");
        assert!(
            text.starts_with("__REALTIME_TIMESTAMP=1700000000123000\nHEIGHT=3\n"),
            "{text}"
        );
        assert!(text.contains("\nCALLER_UID=1000\nCALLER_PID=42\nCALLER_BUS_NAME=:1.9\nCALLER_UNIT=op-dbus.service\n"), "{text}");
        assert!(text.ends_with("\nDATA={\"a\":1}\n"), "{text}");
        let text = String::from_utf8(export(&block("", "{\n\"a\":1}"))).expect("text");
        assert!(!text.contains("CALLER_UNIT"), "{text}");
        assert!(
            text.ends_with("DATA\n\u{8}\0\0\0\0\0\0\0{\n\"a\":1}\n"),
            "{text:?}"
        );
    }
}
