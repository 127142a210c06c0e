//! The daemon's journal records under a real systemd, as an operator reads them: each event
//! it names has the `MESSAGE_ID` of `src/journal.rs`, `journalctl -x` explains it with the
//! catalog's text, field values are plain (no Rust Debug formatting), one record per event,
//! and a clean start and stop logs nothing at warning or worse.
//!
//! Root only, in a booted Debian 12 container (see tests/systemd_nspawn.rs for what it needs);
//! SKIPPED otherwise.

mod common;
mod nspawn;

use nspawn::*;
use opdbus_blockchain::journal;

/// Where the catalog is installed on the host (and here, in the container).
const CATALOG: &str = "/usr/lib/systemd/catalog/opdbus-blockchain.catalog";

/// Our own records of the unit (systemd's about the unit have other identifiers).
fn ours(records: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    records
        .iter()
        .filter(|r| field(r, "SYSLOG_IDENTIFIER") == "opdbus-blockchaind")
        .collect()
}

fn with_id<'a>(records: &[&'a serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .copied()
        .filter(|r| field(r, "MESSAGE_ID") == id)
        .collect()
}

/// What Rust's Debug formatting leaves in a value: `Some(0)`, `None`, `[0, 1]`, `"quoted"`.
fn looks_like_debug(value: &str) -> bool {
    value.starts_with("Some(")
        || value == "None"
        || value.starts_with('[')
        || value.starts_with('"')
        || value.starts_with('{')
}

#[test]
fn real_systemd_journal_has_message_ids_the_catalog_explains_and_plain_fields() {
    let Some(ct) = Container::boot_with_service("msgid") else {
        return;
    };
    // Until scripts/install.sh installs the catalog itself.
    if !ct.path(CATALOG).exists() {
        ct.ok(&[
            "cp",
            &format!("{CT_SRC}/systemd/opdbus-blockchain.catalog"),
            CATALOG,
        ]);
    }
    ct.ok(&["journalctl", "--update-catalog"]);
    // Per-block records are debug.
    ct.enable_debug_logging();
    ct.ok(&["systemctl", "start", UNIT]);

    // A writer in a unit of its own, so that the block names it.
    let reply = ct.ok(&[
        "systemd-run",
        "--quiet",
        "--wait",
        "--pipe",
        "--unit=opdbus-test-writer",
        "busctl",
        "call",
        common::BUS_NAME,
        common::OBJECT_PATH,
        common::BUS_NAME,
        "AddFootprint",
        "sss",
        "network",
        "create",
        r#"{"interface":"eth0"}"#,
    ]);
    let (height, hash) = parse_ack(reply.trim()).expect("an AddFootprint reply");
    // A footprint the input rules refuse: the caller's mistake, logged at info.
    let refused = ct.run(&[
        "busctl",
        "call",
        common::BUS_NAME,
        common::OBJECT_PATH,
        common::BUS_NAME,
        "AddFootprint",
        "sss",
        "network",
        "create",
        "not json",
    ]);
    assert!(!refused.status.success(), "invalid JSON was taken");
    assert!(
        !ct.busctl_call("Snapshot", &[]).is_empty(),
        "Snapshot failed"
    );
    // Genesis and one block: a checkpoint of 2 within the default second.
    ct.wait_for_journal(
        &[&format!("MESSAGE_ID={}", journal::CHECKPOINT_ISSUED)],
        |r| r.iter().any(|r| field(r, "CHECKPOINT_SIZE") == "2"),
    );
    ct.ok(&["systemctl", "stop", UNIT]);
    let records = ct.wait_for_journal(&[], |records| {
        !with_id(&ours(records), journal::STOPPED).is_empty()
    });
    let ours = ours(&records);

    // The events, each with its id, once.
    for (name, id) in [
        ("STARTED", journal::STARTED),
        ("STOPPING", journal::STOPPING),
        ("STOPPED", journal::STOPPED),
        ("SNAPSHOT_TAKEN", journal::SNAPSHOT_TAKEN),
        ("FOOTPRINT_REFUSED", journal::FOOTPRINT_REFUSED),
    ] {
        assert_eq!(with_id(&ours, id).len(), 1, "{name} ({id}) not once");
    }
    let started = with_id(&ours, journal::STARTED)[0];
    assert!(
        field(started, "MESSAGE").starts_with("serving"),
        "{started}"
    );
    assert_eq!(field(started, "HEIGHT"), "0", "{started}");
    let stopping = with_id(&ours, journal::STOPPING)[0];
    assert_eq!(field(stopping, "REASON"), "SIGTERM", "{stopping}");
    let refusal = with_id(&ours, journal::FOOTPRINT_REFUSED)[0];
    assert_eq!(field(refusal, "PRIORITY"), "6", "{refusal}");
    assert_eq!(field(refusal, "PLUGIN"), "network", "{refusal}");
    assert_eq!(field(refusal, "CALLER_UID"), "0", "{refusal}");
    assert!(
        field(refusal, "MESSAGE").contains("not valid JSON"),
        "{refusal}"
    );

    // The block record names its caller: uid and unit.
    let block = ours
        .iter()
        .find(|r| field(r, "BLOCK_HASH") == hash)
        .expect("the block's record");
    assert_eq!(field(block, "BLOCK_HEIGHT"), height.to_string());
    assert_eq!(field(block, "CALLER_UID"), "0", "{block}");
    assert_eq!(
        field(block, "CALLER_UNIT"),
        "opdbus-test-writer.service",
        "{block}"
    );

    // Plain values: every field we set (journald's own start with `_`).
    for record in &ours {
        let object = record.as_object().expect("a JSON object");
        for (key, value) in object {
            if key.starts_with('_') || key == "MESSAGE" {
                continue;
            }
            // A value with control characters (the checkpoint note) comes as an array of
            // bytes: not a formatted value.
            let Some(text) = value.as_str() else {
                continue;
            };
            assert!(
                !looks_like_debug(text),
                "{key}={text} looks like Rust Debug formatting in {record}"
            );
        }
        let message = field(record, "MESSAGE");
        assert!(
            !message.contains("Some(") && !message.is_empty(),
            "message: {record}"
        );
    }

    // One record per event: no message twice in a row.
    for pair in ours.windows(2) {
        assert_ne!(
            field(pair[0], "MESSAGE"),
            field(pair[1], "MESSAGE"),
            "the same message twice in a row"
        );
    }
    // The records that repeated the line before them are gone.
    for gone in ["NUMA topology", "chain writer thread binding"] {
        assert!(
            ours.iter().all(|r| field(r, "MESSAGE") != gone),
            "'{gone}' is still logged"
        );
    }
    // A first start reads as one: nothing about a missing vector file above debug.
    assert!(
        ours.iter()
            .all(|r| !field(r, "MESSAGE").contains("os error 2") || field(r, "PRIORITY") == "7"),
        "a missing file reads as an error"
    );

    // Nothing at warning or worse on a clean start and stop.
    let loud: Vec<_> = ours
        .iter()
        .filter(|r| field(r, "PRIORITY").parse::<u8>().is_ok_and(|p| p <= 4))
        .map(|r| field(r, "MESSAGE"))
        .collect();
    assert!(loud.is_empty(), "warnings on a clean run: {loud:#?}");

    // journalctl -x explains a record with the catalog's text.
    let explained = ct.ok(&[
        "journalctl",
        "-b",
        "-x",
        "-u",
        UNIT,
        "--no-pager",
        &format!("MESSAGE_ID={}", journal::STARTED),
    ]);
    assert!(
        explained.contains("Subject: opdbus-blockchaind serves the audit chain")
            && explained.contains("Defined-By: opdbus-blockchain"),
        "{explained}"
    );
    let explained = ct.ok(&["journalctl", "-b", "-x", "-u", UNIT, "--no-pager"]);
    assert!(
        explained.contains("opdbus-blockchaind stopped"),
        "{explained}"
    );

    // A start that fails says so, once per attempt, with the cause in the message.
    ct.ok(&["chmod", "o+w", "/var/lib/op-dbus/blockchain"]);
    let start = ct.run(&["systemctl", "start", UNIT]);
    assert!(
        !start.status.success(),
        "started with a world-writable chain dir"
    );
    let records = ct.wait_for_journal(
        &[&format!("MESSAGE_ID={}", journal::START_FAILED)],
        |records| !records.is_empty(),
    );
    assert_eq!(field(&records[0], "PRIORITY"), "3", "{}", records[0]);
    assert!(
        field(&records[0], "MESSAGE").contains("/var/lib/op-dbus/blockchain"),
        "{}",
        records[0]
    );
}
