//! The shared cache tier on real Redis: Debian's `redis-server` alone and as a three-node
//! Redis Cluster made with `redis-cli --cluster create`, through the library's cache and
//! through the daemon on a private bus. Values written into Redis by hand are refused; a
//! stopped, stalled or killed node is a miss, never an error of a reader or a writer.

mod common;

use common::*;
use opdbus_blockchain::cache::shared::SharedCacheUrl;
use opdbus_blockchain::cache::{BlockCache, CacheOptions, CacheStats};
use opdbus_blockchain::Block;
use opdbus_testkit::corpus;
use opdbus_testkit::redis::{redis_or_skip, RedisCluster, RedisServer};
use std::path::Path;
use std::time::{Duration, Instant};

const CHAIN_ID: [u8; 16] = [0x5a; 16];
const TIMEOUT: Duration = Duration::from_millis(50);

/// A cache in `dir` of the chain of `blocks` ([`CHAIN_ID`], its links), with the shared tier
/// at `url`; nothing preloaded.
fn open(dir: &Path, url: &str, blocks: &[Block]) -> BlockCache {
    open_with_timeout(dir, url, blocks, TIMEOUT)
}

fn open_with_timeout(dir: &Path, url: &str, blocks: &[Block], timeout: Duration) -> BlockCache {
    let cache = BlockCache::open(&CacheOptions::new(dir)).expect("open the cache");
    cache.set_links(corpus::links(blocks));
    let url = SharedCacheUrl::parse(url).expect("a shared cache URL");
    cache
        .attach_shared(url, timeout, &CHAIN_ID)
        .expect("attach the shared tier");
    cache
}

/// A redis-server for the test `test`, its URL and a scratch directory; `None` when the
/// test skips (no redis-server outside CI).
fn redis_for(test: &str) -> Option<(RedisServer, String, tempfile::TempDir)> {
    if !redis_or_skip(test) {
        return None;
    }
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    Some((redis, url, tempfile::tempdir().expect("tempdir")))
}

/// `blocks` put into a fresh cache in `dir` that uploads them to `url`.
fn upload(dir: &Path, url: &str, blocks: &[Block]) -> CacheStats {
    let cache = open(dir, url, blocks);
    for block in blocks {
        cache.put(block).expect("put");
    }
    cache.flush_shared_and_wait(Duration::from_secs(30));
    cache.stats()
}

/// The key of `hash` under [`CHAIN_ID`], as the docs give it.
fn block_key(block: &Block) -> String {
    format!(
        "opdbus:{}:b:{}",
        hex::encode(CHAIN_ID),
        hex::encode(block.hash)
    )
}

fn redis_set(url: &str, key: &str, value: &[u8]) {
    let client = redis::Client::open(url).expect("client");
    let mut connection = client.get_connection().expect("connect");
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .exec(&mut connection)
        .expect("SET");
}

fn redis_get(url: &str, key: &str) -> Vec<u8> {
    let client = redis::Client::open(url).expect("client");
    let mut connection = client.get_connection().expect("connect");
    redis::cmd("GET")
        .arg(key)
        .query(&mut connection)
        .expect("GET")
}

#[test]
fn blocks_come_back_from_redis_checked_and_forged_values_are_refused() {
    let Some((_redis, url, tmp)) =
        redis_for("blocks_come_back_from_redis_checked_and_forged_values_are_refused")
    else {
        return;
    };
    let blocks = corpus::blocks(31, 400);

    let written = upload(&tmp.path().join("a"), &url, &blocks);
    assert!(written.shared_bytes_written > 0, "{written:#?}");
    assert_eq!(written.shared_errors, 0, "{written:#?}");
    // The values are the disk tier's frames, compressed with a trained dictionary, which is
    // stored under its id beside them.
    let frame = redis_get(&url, &block_key(&blocks[300]));
    let dictionary = zstd::zstd_safe::get_dict_id_from_frame(&frame)
        .expect("a frame compressed with a dictionary");
    let dictionary_key = format!(
        "opdbus:{}:d:{:08x}",
        hex::encode(CHAIN_ID),
        dictionary.get()
    );
    assert!(!redis_get(&url, &dictionary_key).is_empty());
    assert!(
        written.shared_bytes_written < written.canonical_bytes,
        "compressed in Redis too: {written:#?}"
    );

    // Another cache (another host), empty: every block from the shared tier, dictionaries
    // fetched from it.
    let reader = open(&tmp.path().join("b"), &url, &blocks);
    for block in &blocks {
        assert_eq!(reader.get(&block.hash).as_deref(), Some(block));
    }
    let stats = reader.stats();
    assert_eq!((stats.shared_hits, stats.hits), (400, 400), "{stats:#?}");
    assert_eq!(stats.shared_dropped, 0);

    // A daemon whose chain is behind does not ask for blocks it does not have (it could not
    // tell them from forgeries), and reads those it has.
    let behind = open(&tmp.path().join("behind"), &url, &blocks[..100]);
    assert!(behind.get(&blocks[300].hash).is_none());
    assert_eq!(behind.get(&blocks[50].hash).as_deref(), Some(&blocks[50]));
    let stats = behind.stats();
    assert_eq!(
        (stats.shared_dropped, stats.shared_misses),
        (0, 0),
        "{stats:#?}"
    );

    // Written once: a second upload of the same blocks writes nothing.
    let again = upload(&tmp.path().join("c"), &url, &blocks[..10]);
    assert_eq!(again.shared_bytes_written, 0, "{again:#?}");
    assert_eq!(again.shared_errors, 0, "{again:#?}");

    // Forged by hand: another block's frame (a real block, the wrong hash), bytes that are
    // not a frame, and a value longer than any frame the daemon reads (GETRANGE stops there).
    // None is served; each is counted once and not asked for again.
    let another = redis_get(&url, &block_key(&blocks[11]));
    redis_set(&url, &block_key(&blocks[10]), &another);
    redis_set(&url, &block_key(&blocks[12]), b"not a zstd frame");
    let mut long = redis_get(&url, &block_key(&blocks[14]));
    long.resize(opdbus_blockchain::cache::shared::MAX_FRAME + 10, 0);
    redis_set(&url, &block_key(&blocks[13]), &long);
    drop(long);
    // Reading the 64 MiB value takes longer than TIMEOUT on a slow machine (a timeout sets
    // the tier aside for a while, and block 11 would not be asked for): this reader waits.
    let fresh = open_with_timeout(
        &tmp.path().join("d"),
        &url,
        &blocks,
        Duration::from_secs(10),
    );
    for _ in 0..2 {
        assert!(fresh.get(&blocks[10].hash).is_none());
        assert!(fresh.get(&blocks[12].hash).is_none());
        assert!(fresh.get(&blocks[13].hash).is_none());
    }
    assert_eq!(fresh.get(&blocks[11].hash).as_deref(), Some(&blocks[11]));
    let stats = fresh.stats();
    assert_eq!(stats.shared_dropped, 3, "{stats:#?}");
    assert_eq!((stats.shared_hits, stats.misses), (1, 6), "{stats:#?}");
    assert_eq!(stats.hot_entries, 1, "nothing forged kept: {stats:#?}");
    assert_eq!(stats.total_entries, 0, "nothing forged stored: {stats:#?}");
}

/// A full Redis (`maxmemory` with `noeviction`) refuses SETs with OOM: counted, what it took
/// before is counted as written, and the tier stays in use for reads.
#[test]
fn a_full_redis_refuses_uploads_and_is_still_read() {
    if !redis_or_skip("a_full_redis_refuses_uploads_and_is_still_read") {
        return;
    }
    let redis = RedisServer::start_with(
        false,
        &["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"],
    )
    .expect("redis-server");
    let url = redis.url();
    let blocks = corpus::blocks(40, 20_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let stats = upload(&tmp.path().join("a"), &url, &blocks);
    eprintln!("{stats:#?}");
    assert!(stats.shared_bytes_written > 0, "{stats:#?}");
    assert!(stats.shared_errors >= 1, "OOM refusals counted: {stats:#?}");
    assert!(stats.shared_skipped >= 1, "{stats:#?}");
    assert!(
        stats.shared_skipped < 20_000,
        "not the whole upload: {stats:#?}"
    );
    let reader = open(&tmp.path().join("b"), &url, &blocks);
    assert_eq!(reader.get(&blocks[10].hash).as_deref(), Some(&blocks[10]));
}

/// A block that is not in this chain is never read from Redis, however well it hashes: one
/// made by whoever can write there, stored under its own (correct) hash and the chain's id.
/// And a key of another type (a tenant's LPUSH) is a miss that costs only that read.
#[test]
fn a_well_hashed_block_of_no_chain_and_a_key_of_another_type_are_misses() {
    let Some((redis, url, tmp)) =
        redis_for("a_well_hashed_block_of_no_chain_and_a_key_of_another_type_are_misses")
    else {
        return;
    };
    let blocks = corpus::blocks(39, 50);
    upload(&tmp.path().join("a"), &url, &blocks);
    // The forger's block: height 20, linked to this chain's block 19, any content.
    let genuine = &blocks[19];
    let forged = Block::new(
        genuine.height,
        genuine.timestamp_ns,
        genuine.prev_hash,
        genuine.caller.clone(),
        genuine.plugin.clone(),
        "forged".into(),
        r#"{"forged":true}"#.into(),
    );
    let frame = zstd::bulk::compress(&forged.encode(), 3).expect("zstd");
    redis_set(&url, &block_key(&forged), &frame);
    let reader = open(&tmp.path().join("b"), &url, &blocks);
    assert!(reader.get(&forged.hash).is_none());
    let stats = reader.stats();
    assert_eq!(
        (stats.shared_hits, stats.shared_misses, stats.misses),
        (0, 0, 1),
        "not even asked for: {stats:#?}"
    );

    let key = block_key(&blocks[5]);
    let _ = redis.cli(&["DEL", &key]).expect("DEL");
    assert_eq!(redis.cli(&["LPUSH", &key, "x"]).expect("LPUSH").trim(), "1");
    assert!(reader.get(&blocks[5].hash).is_none());
    assert_eq!(reader.get(&blocks[6].hash).as_deref(), Some(&blocks[6]));
    let stats = reader.stats();
    assert_eq!(
        (stats.shared_errors, stats.shared_hits),
        (1, 1),
        "{stats:#?}"
    );
}

#[test]
fn a_stalled_or_stopped_redis_is_a_quick_miss_and_it_is_used_again_when_back() {
    if !redis_or_skip("a_stalled_or_stopped_redis_is_a_quick_miss_and_it_is_used_again_when_back") {
        return;
    }
    let mut redis =
        RedisServer::start_with(false, &["--enable-debug-command", "yes"]).expect("redis-server");
    let url = redis.url();
    let blocks = corpus::blocks(32, 50);
    let tmp = tempfile::tempdir().expect("tempdir");
    upload(&tmp.path().join("a"), &url, &blocks);

    // Stalled: the server sleeps for two seconds. A lookup gives up after its deadline.
    let reader = open(&tmp.path().join("b"), &url, &blocks);
    assert!(reader.get(&blocks[0].hash).is_some(), "connected");
    let sleeper = {
        let redis_cli = redis.address();
        std::thread::spawn(move || {
            let client = redis::Client::open(format!("redis://{redis_cli}")).expect("client");
            let mut connection = client.get_connection().expect("connect");
            let _ = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(2)
                .exec(&mut connection);
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert!(reader.get(&blocks[1].hash).is_none());
    let stalled = started.elapsed();
    // Then set aside: no further wait at all until the backoff ends.
    let started = Instant::now();
    assert!(reader.get(&blocks[2].hash).is_none());
    let set_aside = started.elapsed();
    sleeper.join().expect("sleeper");
    assert!(stalled < Duration::from_millis(500), "{stalled:?}");
    assert!(set_aside < TIMEOUT, "no deadline waited for: {set_aside:?}");
    let stats = reader.stats();
    assert_eq!(stats.shared_errors, 1, "{stats:#?}");

    // Stopped: uploads are skipped, not waited for.
    redis.kill();
    std::thread::sleep(Duration::from_millis(1100));
    let more = corpus::blocks(33, 20);
    let writer = open(&tmp.path().join("c"), &url, &more);
    let started = Instant::now();
    for block in &more {
        writer.put(block).expect("the disk tier takes it");
    }
    writer.flush_shared_and_wait(Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(2));
    let stats = writer.stats();
    assert_eq!(stats.total_entries, 20);
    assert!(stats.shared_errors >= 1, "{stats:#?}");
    assert!(stats.shared_skipped >= 1, "{stats:#?}");

    // Back (empty: its data was not saved): used again once the backoff ends.
    redis.restart().expect("restart redis-server");
    upload(&tmp.path().join("d"), &url, &blocks[..5]);
    wait_until(
        Duration::from_secs(40),
        "the reader to use Redis again",
        || reader.get(&blocks[3].hash).is_some(),
    );
    assert!(reader.stats().shared_hits >= 2);
}

#[test]
fn a_three_node_cluster_holds_the_tier_and_a_killed_node_costs_misses_only() {
    if !redis_or_skip("a_three_node_cluster_holds_the_tier_and_a_killed_node_costs_misses_only") {
        return;
    }
    let mut cluster = RedisCluster::start().expect("a Redis Cluster");
    // As the documented ACL user, whose rights must do for a cluster too.
    for node in &cluster.nodes {
        add_documented_acl_user(node);
    }
    let url = cluster.url().replace("://", "://opdbus:s3cret@");
    let blocks = corpus::blocks(34, 300);
    let tmp = tempfile::tempdir().expect("tempdir");
    let written = upload(&tmp.path().join("a"), &url, &blocks);
    assert_eq!(written.shared_errors, 0, "{written:#?}");
    for node in &cluster.nodes {
        let keys: u64 = node
            .cli(&["DBSIZE"])
            .expect("DBSIZE")
            .trim()
            .parse()
            .expect("n");
        assert!(
            keys > 50,
            "keys spread over the slots, this node has {keys}"
        );
    }

    let reader = open(&tmp.path().join("b"), &url, &blocks);
    for block in &blocks[..100] {
        assert_eq!(reader.get(&block.hash).as_deref(), Some(block));
    }
    assert_eq!(reader.stats().shared_hits, 100);

    // One node killed during reads: every answer is right or a miss, and quick.
    let victim = cluster
        .node_of(&block_key(&blocks[150]))
        .expect("the node of a key");
    cluster.nodes[victim].kill();
    let started = Instant::now();
    let mut served = 0;
    for block in &blocks[100..] {
        if let Some(found) = reader.get(&block.hash) {
            assert_eq!(found.as_ref(), block);
            served += 1;
        }
    }
    let elapsed = started.elapsed();
    let stats = reader.stats();
    eprintln!("with a node killed: {served} of 200 served in {elapsed:?}; {stats:#?}");
    assert!(stats.shared_errors >= 1, "{stats:#?}");
    assert!(served < 200);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // The node back (empty) and the cluster whole again: the tier is used again.
    cluster.nodes[victim].restart().expect("restart the node");
    add_documented_acl_user(&cluster.nodes[victim]);
    wait_until(
        Duration::from_secs(30),
        "the cluster to be ok again",
        || cluster.is_ok(),
    );
    let survivor = blocks
        .iter()
        .rev()
        .find(|b| {
            cluster.node_of(&block_key(b)).is_ok_and(|n| n != victim) && !reader.is_hot(&b.hash)
        })
        .expect("a block on another node, not read yet");
    wait_until(
        Duration::from_secs(40),
        "the reader to use the cluster again",
        || reader.get(&survivor.hash).is_some(),
    );
}

/// The bar: a daemon with the shared tier adds footprints; restarted with an empty cache
/// directory it serves GetBlock from the shared tier; then Redis stops, and footprints are
/// still acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bar_a_daemon_restarted_without_its_cache_reads_redis_and_writes_without_it() {
    if !redis_or_skip("bar_a_daemon_restarted_without_its_cache_reads_redis_and_writes_without_it")
    {
        return;
    }
    let mut redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let bus = Bus::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain_dir, cache_dir) = (dir.path().join("chain"), dir.path().join("cache"));
    let env = [("OPDBUS_SHARED_CACHE", url.as_str())];
    let mut daemon = Daemon::start_with_env(&bus, &chain_dir, &cache_dir, &env);
    let added = add_corpus(&bus, 35, 120).await;
    wait_until(Duration::from_secs(60), "the blocks to reach Redis", || {
        let keys: u64 = redis
            .cli(&["DBSIZE"])
            .expect("DBSIZE")
            .trim()
            .parse()
            .expect("n");
        keys > 120
    });
    daemon.stop();
    std::fs::remove_dir_all(&cache_dir).expect("delete the cache");

    daemon.restart(&bus);
    let connection = bus.connect().await;
    for (height, hash) in &added {
        let block = get_block(&connection, hash).await.expect("GetBlock");
        assert_eq!(block["height"], *height);
    }
    let stats: serde_json::Value = bus.call_dict("CacheStats").into();
    eprintln!("CacheStats after a restart without a cache: {stats}");
    assert!(stats["shared_hits"].as_u64() > Some(100), "{stats}");
    assert_eq!(stats["shared_dropped"].as_u64(), Some(0), "{stats}");

    redis.kill();
    assert_eq!(
        add_corpus(&bus, 36, 30).await.len(),
        30,
        "acknowledged with Redis gone"
    );
    let (height, hash) = added[7].clone();
    let block = get_block(&connection, &hash).await.expect("GetBlock");
    assert_eq!(block["height"], height);
    wait_until(Duration::from_secs(30), "the outage to be counted", || {
        let stats: serde_json::Value = bus.call_dict("CacheStats").into();
        stats["shared_errors"].as_u64() >= Some(1)
    });
    let log = daemon.log_text();
    assert_eq!(
        log.matches("the shared cache does not answer").count(),
        1,
        "one warning per outage:\n{log}"
    );
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Measurement, not a check (`cargo test --release --test shared_cache -- --ignored
/// --nocapture`): Redis memory per block, and the shared-tier hit p50 against a plain GET of
/// the same values from the same client library, interleaved.
#[test]
#[ignore]
fn measure_redis_bytes_per_block_and_hit_latency() {
    if !redis_or_skip("measure_redis_bytes_per_block_and_hit_latency") {
        return;
    }
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let used = || -> u64 {
        let info = redis.cli(&["INFO", "memory"]).expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    let n = 20_000;
    let blocks = corpus::blocks(41, n);
    let tmp = tempfile::tempdir().expect("tempdir");
    let before = used();
    let written = upload(&tmp.path().join("a"), &url, &blocks);
    let after = used();
    let canonical: usize = blocks.iter().map(|b| b.encode().len()).sum();
    eprintln!(
        "{n} blocks: Redis used_memory grew {} bytes = {:.0} bytes per block (canonical {:.0}, value {:.0}); {:.0} MB per million blocks",
        after - before,
        (after - before) as f64 / n as f64,
        canonical as f64 / n as f64,
        written.shared_bytes_written as f64 / n as f64,
        (after - before) as f64 / n as f64
    );

    let reader = open(&tmp.path().join("b"), &url, &blocks);
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut connection = client.get_connection().expect("connect");
    let (mut hits, mut gets) = (Vec::new(), Vec::new());
    for block in blocks.iter().step_by(7) {
        let key = block_key(block);
        let started = Instant::now();
        let value: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query(&mut connection)
            .expect("GET");
        gets.push(started.elapsed());
        assert!(!value.is_empty());
        let started = Instant::now();
        assert!(reader.get(&block.hash).is_some());
        hits.push(started.elapsed());
    }
    let (hit, get) = (p50(hits), p50(gets));
    eprintln!(
        "shared-tier hit p50 {hit:?} (GETRANGE, dictionary, decompress, decode, re-hash), plain GET p50 {get:?}: {:.2}x",
        hit.as_secs_f64() / get.as_secs_f64()
    );
    assert_eq!(reader.stats().shared_dropped, 0);
}

/// Adds the ACL user docs/operations.md gives (`opdbus`, password `s3cret`) to `redis`.
fn add_documented_acl_user(redis: &RedisServer) {
    let doc = std::fs::read_to_string(repo_path("docs/operations.md")).expect("operations.md");
    let rule = doc
        .lines()
        .find_map(|line| line.split("`ACL SETUSER ").nth(1))
        .and_then(|rest| rest.split('`').next())
        .expect("the documented ACL rule");
    let mut args = vec!["ACL", "SETUSER"];
    args.extend(rule.split_whitespace());
    assert_eq!(redis.cli(&args).expect("ACL SETUSER").trim(), "OK");
}

/// AUTH as the URL says, with the least an ACL user needs (docs/operations.md); a wrong
/// password is an error counted, never a panic or a wrong answer.
#[test]
fn an_acl_user_with_the_documented_rights_is_enough_and_a_wrong_password_is_a_miss() {
    if !redis_or_skip(
        "an_acl_user_with_the_documented_rights_is_enough_and_a_wrong_password_is_a_miss",
    ) {
        return;
    }
    let redis = RedisServer::start().expect("redis-server");
    add_documented_acl_user(&redis);
    let port = redis.port();
    let blocks = corpus::blocks(37, 100);
    let tmp = tempfile::tempdir().expect("tempdir");

    let url = format!("redis://opdbus:s3cret@127.0.0.1:{port}");
    let written = upload(&tmp.path().join("a"), &url, &blocks);
    assert_eq!(written.shared_errors, 0, "{written:#?}");
    assert!(written.shared_bytes_written > 0, "{written:#?}");
    let reader = open(&tmp.path().join("b"), &url, &blocks);
    for block in &blocks {
        assert_eq!(reader.get(&block.hash).as_deref(), Some(block));
    }
    assert_eq!(reader.stats().shared_errors, 0);

    let wrong = format!("redis://opdbus:wrong@127.0.0.1:{port}");
    let refused = open(&tmp.path().join("c"), &wrong, &blocks);
    assert!(refused.get(&blocks[0].hash).is_none());
    let stats = refused.stats();
    assert_eq!(
        (stats.shared_errors, stats.shared_hits),
        (1, 0),
        "{stats:#?}"
    );
    // The password is in no error the daemon could log or show.
    let shown = format!("{:?}", SharedCacheUrl::parse(&wrong).expect("a valid URL"));
    assert!(!shown.contains("wrong"), "{shown}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// TLS as the URL says (`rediss://`), checked against the system's CA store, which
/// `SSL_CERT_FILE` points at a test CA here: the daemon uploads through TLS; a client that
/// does not trust the CA gets nothing and counts an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_uploads_over_tls_and_an_untrusted_certificate_is_refused() {
    if !redis_or_skip("rediss_uploads_over_tls_and_an_untrusted_certificate_is_refused") {
        return;
    }
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=opdbus test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let path = |name: &str| dir.join(name).to_str().expect("utf-8").to_owned();
    let (cert, key, ca_pem) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let redis = RedisServer::start_with(
        false,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_pem,
            "--tls-auth-clients",
            "no",
        ],
    )
    .expect("redis-server with TLS");
    let url = format!("rediss://127.0.0.1:{tls_port}");

    let bus = Bus::start();
    let work = tempfile::tempdir().expect("tempdir");
    let env = [
        ("OPDBUS_SHARED_CACHE", url.as_str()),
        ("SSL_CERT_FILE", ca_pem.as_str()),
        // A TLS handshake of a debug build on a busy 2-CPU machine can take longer than the
        // default's 200 ms to connect; a failed connect drops uploads for a backoff. This test
        // is about TLS, not deadlines.
        ("OPDBUS_SHARED_CACHE_TIMEOUT", "500ms"),
    ];
    let _daemon = Daemon::start_with_env(
        &bus,
        &work.path().join("chain"),
        &work.path().join("cache"),
        &env,
    );
    add_corpus(&bus, 38, 30).await;
    wait_until(
        Duration::from_secs(30),
        "the blocks to reach Redis over TLS",
        || {
            let keys: u64 = redis
                .cli(&["DBSIZE"])
                .expect("DBSIZE")
                .trim()
                .parse()
                .expect("n");
            keys > 30
        },
    );
    let stats: serde_json::Value = bus.call_dict("CacheStats").into();
    assert_eq!(stats["shared_errors"].as_u64(), Some(0), "{stats}");

    // This test process trusts only the system's CAs, not the test CA.
    let blocks = corpus::blocks(38, 5);
    let untrusting = open(&work.path().join("other"), &url, &blocks);
    assert!(untrusting.get(&blocks[0].hash).is_none());
    let stats = untrusting.stats();
    assert_eq!(
        (stats.shared_errors, stats.shared_hits),
        (1, 0),
        "{stats:#?}"
    );
}
