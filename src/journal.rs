//! What the daemon's records carry beyond a message: the `MESSAGE_ID` of each event an
//! operator may look for, field values as plain text, a throttle for records that callers can
//! cause at will, and the stderr format used when not under systemd.
//!
//! Every id here has exactly one entry in `systemd/opdbus-blockchain.catalog` (installed to
//! `/usr/lib/systemd/catalog/`), so `journalctl -x` explains the record and
//! `journalctl MESSAGE_ID=<id>` finds every occurrence; a unit test below holds the two
//! together. An id names an event, never a code line: ids are not reused for something else,
//! and a record changes its id only when its meaning changes.
//!
//! A record carries one as the field `message_id = journal::STARTED`: tracing-journald
//! upper-cases field names, so the journal gets `MESSAGE_ID=`; [`StderrFields`] leaves it out.
//!
//! Field values are what a person or `journalctl FIELD=value` expects: a number, a word, a
//! path, a list as `0,1`; never Rust's `Some(0)`, `[0, 1]` or quoted strings. A field with no
//! value is left out of the record (an `Option` that is `None`).

use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Serving on the bus, `READY=1` sent (info).
pub const STARTED: &str = "ce94d1c00ad448698142873c407c2470";
/// A stop began: on SIGTERM/SIGINT (info) or because the store latched (error).
pub const STOPPING: &str = "bd6a21766ca747bd8b5b7d9b5656a407";
/// Stopped; everything acknowledged is on disk (info).
pub const STOPPED: &str = "4f916e57348c41e3876a1771338ba0b5";
/// The daemon could not start; the message says why (error).
pub const START_FAILED: &str = "b6e4c15ad98a46a69ae0e175a4881ff1";
/// A footprint was refused: the caller may not write (warning) or the footprint breaks the
/// input rules (info). Throttled by [`REFUSALS`].
pub const FOOTPRINT_REFUSED: &str = "1506136d70bf403da6781b79eb9e44e2";
/// The store latched after a failed flush (fdatasync) or rollback: no more writes until a
/// restart (error).
pub const STORAGE_LATCHED: &str = "805f41786b49404ea2bc285ddf22e132";
/// A batch could not be written (disk full, I/O error) and was rolled back; the store goes on
/// (warning).
pub const WRITE_FAILED: &str = "6ce03f223b3c4939bb5512d05160f4de";
/// A unified snapshot of chain and cache was taken, on schedule or on request (info).
pub const SNAPSHOT_TAKEN: &str = "42845a6a7bb04f9491d2da817e284713";
/// A snapshot could not be taken (warning).
pub const SNAPSHOT_FAILED: &str = "e6dc0419ebe0437da1131415b76c914a";
/// Retention deleted expired snapshots (info).
pub const SNAPSHOTS_PRUNED: &str = "8178717512e644a892832a88e9abb94e";
/// Retention could not delete or list snapshots (warning).
pub const PRUNE_FAILED: &str = "ef810bc7280f4b72b97aa8cd4856e675";
/// The transparency log signed and published a checkpoint (info).
pub const CHECKPOINT_ISSUED: &str = "5e0e1cd8c5214a6bb931c0512b3d0862";
/// The transparency log could not start, halted, or could not issue a checkpoint (error).
pub const CHECKPOINT_FAILED: &str = "8e3c4130e10d448ebb4115d8be1fe395";
/// A replica's source diverged (rollback, truncation, rewrite, fork) or sent invalid data: the
/// replica stopped at the tree size given, its copy kept (error).
pub const REPLICA_DIVERGED: &str = "e5164604d79f4e46b9119ae52c332a9e";

/// Every id, with the constant's name, for the catalog test and the documentation.
pub const ALL: &[(&str, &str)] = &[
    ("STARTED", STARTED),
    ("STOPPING", STOPPING),
    ("STOPPED", STOPPED),
    ("START_FAILED", START_FAILED),
    ("FOOTPRINT_REFUSED", FOOTPRINT_REFUSED),
    ("STORAGE_LATCHED", STORAGE_LATCHED),
    ("WRITE_FAILED", WRITE_FAILED),
    ("SNAPSHOT_TAKEN", SNAPSHOT_TAKEN),
    ("SNAPSHOT_FAILED", SNAPSHOT_FAILED),
    ("SNAPSHOTS_PRUNED", SNAPSHOTS_PRUNED),
    ("PRUNE_FAILED", PRUNE_FAILED),
    ("CHECKPOINT_ISSUED", CHECKPOINT_ISSUED),
    ("CHECKPOINT_FAILED", CHECKPOINT_FAILED),
    ("REPLICA_DIVERGED", REPLICA_DIVERGED),
];

/// Refused footprints: a caller looping on a refused call must not fill the journal (and trip
/// journald's own rate limit, which would drop our other records with it).
pub static REFUSALS: Throttle = Throttle::new(10, Duration::from_secs(60));

/// Failed batches (WRITE_FAILED): on a full disk every new batch fails the same way.
pub static WRITE_FAILURES: Throttle = Throttle::new(10, Duration::from_secs(60));

/// At most `burst` records per `window`; what is left out is counted, and the next record let
/// through says how many.
pub struct Throttle {
    burst: u32,
    window: Duration,
    state: Mutex<ThrottleState>,
}

struct ThrottleState {
    window_start: Option<Instant>,
    in_window: u32,
    left_out: u64,
}

impl Throttle {
    pub const fn new(burst: u32, window: Duration) -> Self {
        Throttle {
            burst,
            window,
            state: Mutex::new(ThrottleState {
                window_start: None,
                in_window: 0,
                left_out: 0,
            }),
        }
    }

    /// `Some(n)` when a record may be written now, `n` being how many were left out since the
    /// last one written; `None` when this one is to be left out.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A panic elsewhere while holding it leaves counters that are still counters.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            state.window_start = Some(now);
            state.in_window = 0;
        }
        if state.in_window >= self.burst {
            state.left_out += 1;
            return None;
        }
        state.in_window += 1;
        Some(std::mem::take(&mut state.left_out))
    }
}

/// `items` as one field value, `a,b,c`; `None` (the field is left out) when there are none.
pub fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> Option<String> {
    let mut joined = String::new();
    for item in items {
        if !joined.is_empty() {
            joined.push(',');
        }
        let _ = write!(joined, "{item}");
    }
    (!joined.is_empty()).then_some(joined)
}

/// `text`, or `None` (the field is left out) when it is empty.
pub fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// The fields of a stderr record: the message, then `key=value` with the values as they are
/// (no quotes, no Debug wrapping); control characters escaped so that a record stays on one
/// line (a checkpoint note has several); `message_id` left out, as the message says the same.
pub struct StderrFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for StderrFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = StderrVisitor::default();
        fields.record(&mut visitor);
        let StderrVisitor { message, rest } = visitor;
        let sep = if message.is_empty() || rest.is_empty() {
            ""
        } else {
            " "
        };
        write!(writer, "{message}{sep}{rest}")
    }
}

#[derive(Default)]
struct StderrVisitor {
    message: String,
    rest: String,
}

impl StderrVisitor {
    fn put(&mut self, field: &tracing::field::Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        if name == "message_id" {
            return;
        }
        let out = if name == "message" {
            &mut self.message
        } else {
            if !self.rest.is_empty() {
                self.rest.push(' ');
            }
            self.rest.push_str(name);
            self.rest.push('=');
            &mut self.rest
        };
        let _ = write!(EscapeControls(out), "{value}");
    }
}

impl tracing::field::Visit for StderrVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, format_args!("{value}"));
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.put(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.put(field, format_args!("{value:?}"));
    }
}

/// Writes into a string with control characters (newlines, escape sequences) escaped.
struct EscapeControls<'a>(&'a mut String);

impl fmt::Write for EscapeControls<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_control() {
                self.0.extend(c.escape_default());
            } else {
                self.0.push(c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    fn catalog_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/opdbus-blockchain.catalog")
    }

    /// The catalog's entries: id → header lines (`Key: value`) and whether a body follows.
    fn parse_catalog(text: &str) -> BTreeMap<String, (BTreeMap<String, String>, bool)> {
        let mut entries = BTreeMap::new();
        let mut current: Option<(String, BTreeMap<String, String>, bool, bool)> = None;
        let mut finish = |entry: Option<(String, BTreeMap<String, String>, bool, bool)>| {
            if let Some((id, headers, _, body)) = entry {
                assert!(
                    entries.insert(id.clone(), (headers, body)).is_none(),
                    "{id} has two catalog entries"
                );
            }
        };
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("-- ") {
                finish(current.take());
                assert!(
                    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "not a 128-bit id in lowercase hex: {line:?}"
                );
                current = Some((id.to_owned(), BTreeMap::new(), true, false));
                continue;
            }
            if current.is_none() && (line.starts_with('#') || line.is_empty()) {
                continue;
            }
            let (_, headers, in_headers, body) = current
                .as_mut()
                .expect("no text before the first `-- ID` line");
            if *in_headers {
                if line.is_empty() {
                    *in_headers = false;
                } else {
                    let (key, value) = line
                        .split_once(": ")
                        .unwrap_or_else(|| panic!("not a `Key: value` header: {line:?}"));
                    headers.insert(key.to_owned(), value.to_owned());
                }
            } else if !line.trim().is_empty() {
                *body = true;
            }
        }
        finish(current);
        entries
    }

    #[test]
    fn every_message_id_has_exactly_one_catalog_entry_and_no_entry_is_stray() {
        let text = std::fs::read_to_string(catalog_path()).expect("the catalog file");
        let entries = parse_catalog(&text);
        let ids: BTreeMap<&str, &str> = ALL.iter().map(|(name, id)| (*id, *name)).collect();
        assert_eq!(ids.len(), ALL.len(), "two constants share an id");
        for (name, id) in ALL {
            let (headers, body) = entries
                .get(*id)
                .unwrap_or_else(|| panic!("{name} ({id}) has no catalog entry"));
            for key in ["Subject", "Defined-By", "Support", "Documentation"] {
                assert!(
                    headers.get(key).is_some_and(|v| !v.is_empty()),
                    "{name}: no {key}"
                );
            }
            assert_eq!(headers["Defined-By"], "opdbus-blockchain", "{name}");
            assert!(*body, "{name}: the entry says nothing below its headers");
        }
        for id in entries.keys() {
            assert!(
                ids.contains_key(id.as_str()),
                "catalog entry {id} has no constant"
            );
        }
    }

    /// journalctl is the parser that counts: it builds the binary database from the file
    /// under a private root, and lists every id.
    #[test]
    fn journalctl_reads_the_catalog() {
        let Ok(version) = std::process::Command::new("journalctl")
            .arg("--version")
            .output()
        else {
            eprintln!("SKIPPED: no journalctl here");
            return;
        };
        assert!(version.status.success());
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("usr/lib/systemd/catalog");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::copy(catalog_path(), dir.join("opdbus-blockchain.catalog")).expect("copy");
        let journalctl = |arg: &str| {
            let out = std::process::Command::new("journalctl")
                .arg(format!("--root={}", root.path().display()))
                .arg(arg)
                .output()
                .expect("journalctl");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "journalctl {arg}: {stderr}");
            // journalctl reports a bad entry on stderr and may still exit 0 for some.
            assert!(stderr.trim().is_empty(), "journalctl {arg}: {stderr}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        journalctl("--update-catalog");
        let listed = journalctl("--list-catalog");
        for (name, id) in ALL {
            assert!(
                listed
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("opdbus-blockchain: ")),
                "{name} ({id}) not listed by journalctl --list-catalog:\n{listed}"
            );
        }
        assert_eq!(listed.lines().count(), ALL.len(), "{listed}");
    }

    /// What a record looks like on stderr: plain values, no MESSAGE_ID, one line.
    #[test]
    fn stderr_records_are_one_line_of_plain_values_without_the_message_id() {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(StderrFields)
            .with_writer(move || writer.clone())
            .finish();
        let unit = String::new();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                message_id = STARTED,
                NODE = Some(0u32),
                ABSENT = None::<u32>,
                CPUS = list([0, 1]),
                UIDS = list(Vec::<u32>::new()),
                UNIT = non_empty(&unit),
                NAME = "org.opdbus.Blockchain",
                NOTE = "origin\n2\nroot\n",
                "serving at height {}",
                3
            );
        });
        let text =
            String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
        assert_eq!(
            text,
            " INFO serving at height 3 NODE=0 CPUS=0,1 NAME=org.opdbus.Blockchain \
             NOTE=origin\\n2\\nroot\\n\n"
        );
    }

    #[test]
    fn the_throttle_lets_a_burst_through_then_counts_what_it_leaves_out() {
        let throttle = Throttle::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(t0), Some(0));
        assert_eq!(throttle.admit_at(t0), Some(0));
        assert_eq!(throttle.admit_at(t0), None);
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(59)), None);
        // A new window: the first record says how many were left out.
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(61)), Some(0));
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(61)), None);
    }
}
