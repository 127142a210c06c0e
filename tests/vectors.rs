//! Similarity search over the chain through the real daemon on a real bus.

mod common;

use common::*;
use std::collections::HashMap;
use zbus::zvariant::Value;

type Matches = Vec<(u64, String, f64)>;

async fn find_similar(connection: &zbus::Connection, query: &str, k: u32) -> zbus::Result<Matches> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "FindSimilar",
            &(query, k),
        )
        .await?;
    reply.body().deserialize()
}

async fn find_filtered(
    connection: &zbus::Connection,
    query: &str,
    k: u32,
    filter: HashMap<&str, Value<'_>>,
) -> zbus::Result<Matches> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            OBJECT_PATH,
            Some(BUS_NAME),
            "FindSimilarFiltered",
            &(query, k, filter),
        )
        .await?;
    reply.body().deserialize()
}

/// Footprints of several plugins; returns (hash of eth0 create, hash of its near variant).
async fn add_mixed(connection: &zbus::Connection) -> (String, String) {
    let (_, eth0) = add_footprint(
        connection,
        "network",
        "create",
        r#"{"name":"eth0","mtu":1500,"dhcp":true,"addresses":["10.0.0.2/24"]}"#,
    )
    .await
    .expect("add");
    let others = [
        (
            "systemd",
            "restart",
            r#"{"unit":"nginx.service","result":"done"}"#,
        ),
        (
            "firewall",
            "add_rule",
            r#"{"chain":"input","port":22,"action":"accept"}"#,
        ),
        (
            "packages",
            "install",
            r#"{"name":"curl","version":"7.88.1"}"#,
        ),
        ("systemd", "enable", r#"{"unit":"sshd.service"}"#),
        ("network", "delete", r#"{"name":"br0"}"#),
        (
            "firewall",
            "add_rule",
            r#"{"chain":"forward","port":443,"action":"drop"}"#,
        ),
    ];
    for (plugin, operation, data) in others {
        add_footprint(connection, plugin, operation, data)
            .await
            .expect("add");
    }
    let (_, eth1) = add_footprint(
        connection,
        "network",
        "create",
        r#"{"name":"eth1","mtu":1500,"dhcp":true,"addresses":["10.0.0.3/24"]}"#,
    )
    .await
    .expect("add");
    (eth0, eth1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_finds_itself_first_and_its_near_variant_next() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let _daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let connection = bus.connect().await;
    let (eth0, eth1) = add_mixed(&connection).await;

    let matches = find_similar(&connection, &eth0, 3)
        .await
        .expect("FindSimilar");
    assert_eq!(matches.len(), 3);
    assert_eq!(matches[0].1, eth0, "the block itself first: {matches:?}");
    assert!((matches[0].2 - 1.0).abs() < 1e-6, "{matches:?}");
    assert_eq!(matches[1].1, eth1, "its near variant next: {matches:?}");
    assert!(matches[1].2 > matches[2].2, "{matches:?}");
    assert!(matches.iter().all(|m| m.0 != 0), "never the genesis block");

    // A footprint that is not in the chain finds its relatives too.
    let query = r#"{"plugin":"network","operation":"create","data":{"name":"eth2","mtu":1500,"dhcp":true}}"#;
    let matches = find_similar(&connection, query, 2)
        .await
        .expect("FindSimilar");
    let found: Vec<&str> = matches.iter().map(|m| m.1.as_str()).collect();
    assert!(
        found.contains(&eth0.as_str()) && found.contains(&eth1.as_str()),
        "{matches:?}"
    );

    // Searchable as soon as AddFootprint returned.
    let (_, fresh) = add_footprint(&connection, "users", "create", r#"{"login":"alice"}"#)
        .await
        .expect("add");
    let matches = find_similar(&connection, &fresh, 1)
        .await
        .expect("FindSimilar");
    assert_eq!(matches[0].1, fresh);

    // The CLI says the same.
    let (code, out, err) = cli(&["similar", &eth0, "-k", "2", "--bus", &bus.address]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with(&eth0) && lines[1].ends_with(&eth1),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_restrict_by_plugin_operation_uid_and_time() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let _daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let connection = bus.connect().await;
    let (eth0, _) = add_mixed(&connection).await;

    let by_plugin = find_filtered(
        &connection,
        &eth0,
        10,
        HashMap::from([("plugin", Value::from("firewall"))]),
    )
    .await
    .expect("filtered");
    assert_eq!(by_plugin.len(), 2, "{by_plugin:?}");
    for (_, hash, _) in &by_plugin {
        let block = get_block(&connection, hash).await.expect("block");
        assert_eq!(block["plugin"], "firewall");
    }
    let both = HashMap::from([
        ("plugin", Value::from("systemd")),
        ("operation", Value::from("enable")),
    ]);
    assert_eq!(
        find_filtered(&connection, &eth0, 10, both)
            .await
            .expect("filtered")
            .len(),
        1
    );

    let me = nix::unistd::getuid().as_raw();
    let mine = find_filtered(
        &connection,
        &eth0,
        100,
        HashMap::from([("uid", Value::from(me))]),
    )
    .await
    .expect("filtered");
    assert_eq!(mine.len(), 8, "every footprint is ours: {mine:?}");
    let nobody = find_filtered(
        &connection,
        &eth0,
        100,
        HashMap::from([("uid", Value::from(65534u32))]),
    )
    .await
    .expect("filtered");
    assert!(nobody.is_empty());

    let first = get_block(&connection, &eth0).await.expect("block");
    let t0 = first["timestamp_ns"].as_u64().expect("timestamp_ns");
    let only_first = HashMap::from([("since_ns", Value::from(t0)), ("until_ns", Value::from(t0))]);
    let found = find_filtered(&connection, &eth0, 10, only_first)
        .await
        .expect("filtered");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, eth0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_typed_errors() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let _daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let connection = bus.connect().await;
    let (eth0, _) = add_mixed(&connection).await;
    let invalid = "org.opdbus.Blockchain.Error.InvalidArgument";
    for query in ["", "not a hash", "{", r#"{"plugin":"x"}"#, r#"["network"]"#] {
        let err = find_similar(&connection, query, 5).await.expect_err(query);
        assert_eq!(error_name(&err), invalid, "{query}: {err}");
    }
    let err = find_similar(&connection, &eth0, 0)
        .await
        .expect_err("k = 0");
    assert_eq!(error_name(&err), invalid);
    let err = find_similar(&connection, &eth0, 100_000)
        .await
        .expect_err("huge k");
    assert_eq!(error_name(&err), invalid);
    let unknown = HashMap::from([("colour", Value::from("red"))]);
    let err = find_filtered(&connection, &eth0, 5, unknown)
        .await
        .expect_err("unknown key");
    assert_eq!(error_name(&err), invalid);
    assert!(err.to_string().contains("plugin (s)"), "{err}");
    let wrong_type = HashMap::from([("uid", Value::from("root"))]);
    let err = find_filtered(&connection, &eth0, 5, wrong_type)
        .await
        .expect_err("wrong type");
    assert_eq!(error_name(&err), invalid);
    let err = find_similar(&connection, &"0".repeat(64), 5)
        .await
        .expect_err("no such block");
    assert_eq!(error_name(&err), "org.opdbus.Blockchain.Error.NotFound");
    // The daemon is still fine.
    assert_eq!(
        find_similar(&connection, &eth0, 1).await.expect("ok")[0].1,
        eth0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_foreign_vector_file_is_rebuilt_from_the_chain() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(&bus, &dir.path().join("chain"), &dir.path().join("cache"));
    let connection = bus.connect().await;
    let (eth0, eth1) = add_mixed(&connection).await;
    let before = find_similar(&connection, &eth0, 5)
        .await
        .expect("FindSimilar");
    let file = dir.path().join("chain").join("vectors");
    assert!(file.exists(), "vectors are stored beside the chain");

    daemon.stop();
    std::fs::remove_file(&file).expect("delete the vector file");
    daemon.restart(&bus);
    let connection = bus.connect().await;
    assert_eq!(
        find_similar(&connection, &eth0, 5)
            .await
            .expect("FindSimilar"),
        before
    );
    assert!(file.exists(), "rebuilt");

    // A file from another chain (or damaged header) is not trusted either.
    daemon.stop();
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[20] ^= 0xff; // inside the chain id
    std::fs::write(&file, bytes).expect("write");
    daemon.restart(&bus);
    let connection = bus.connect().await;
    let after = find_similar(&connection, &eth0, 5)
        .await
        .expect("FindSimilar");
    assert_eq!(after, before);
    assert!(
        daemon.log_text().contains("building block vectors"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(after[1].1, eth1);
}
