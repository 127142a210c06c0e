//! The deterministic feature-hashing embedding of a footprint (docs/format.md, "Block vectors").
//!
//! A footprint becomes a list of weighted string features: its plugin, its operation, and for
//! every leaf of its data JSON the key path and the path with its value (plus the words of
//! string values). Each feature adds ±weight to one of [`DIM`] buckets chosen by SHA-256 of the
//! feature; the sum is L2-normalised. Another program can recompute it from the spec alone.
//!
//! Cost: linear in the size of the data, whatever its shape. Key paths are never built as
//! strings: the walk carries the SHA-256 states of `key:<path>` and `value:<path>` and extends
//! a copy for each child, so a long key shared by many leaves is hashed once, not once per leaf
//! (a 45 KB block with a long key over thousands of leaves used to take 0.33 s and hundreds of
//! MB; see docs/reliability.md, "Bounded cost of reads").

use sha2::{Digest, Sha256};

/// Dimensions of a block vector.
pub const DIM: usize = 256;
/// Leaves of the data JSON that are looked at; the rest of a huge document adds nothing.
pub const MAX_LEAVES: usize = 4096;

const WEIGHT_PLUGIN: f64 = 2.0;
const WEIGHT_OPERATION: f64 = 1.0;
const WEIGHT_PLUGIN_OPERATION: f64 = 1.0;
const WEIGHT_KEY: f64 = 0.5;
const WEIGHT_VALUE: f64 = 1.0;
const WEIGHT_TOKEN: f64 = 0.25;

/// Something that turns a footprint into a unit vector of a fixed dimension. The shipped one is
/// [`HashingEmbedder`]; a sentence-embedding model could implement this later.
pub trait Embedder: Send + Sync {
    /// The vector's dimension; every result has exactly this many components.
    fn dim(&self) -> usize;
    /// A unit vector (or all zeros for an empty input).
    fn embed(&self, plugin: &str, operation: &str, data_json: &str) -> Vec<f32>;
}

/// Feature hashing into [`DIM`] buckets, as specified in docs/format.md.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashingEmbedder;

impl Embedder for HashingEmbedder {
    fn dim(&self) -> usize {
        DIM
    }

    fn embed(&self, plugin: &str, operation: &str, data_json: &str) -> Vec<f32> {
        let mut sums = Sums([0f64; DIM]);
        sums.add_feature(&format!("plugin:{plugin}"), WEIGHT_PLUGIN);
        sums.add_feature(&format!("operation:{operation}"), WEIGHT_OPERATION);
        sums.add_feature(
            &format!("plugin+operation:{plugin}/{operation}"),
            WEIGHT_PLUGIN_OPERATION,
        );
        let mut leaves = 0;
        walk(
            &parse_data(data_json),
            &PathHashes::root(),
            &mut sums,
            &mut leaves,
        );
        let norm = sums.0.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return vec![0.0; DIM];
        }
        sums.0.iter().map(|x| (x / norm) as f32).collect()
    }
}

/// The bucket and sign of a feature: SHA-256 of its UTF-8 bytes; bytes 0..4 as a
/// little-endian u32 modulo [`DIM`] give the bucket, the low bit of byte 4 the sign (1 = minus).
pub fn bucket_of(feature: &str) -> (usize, f64) {
    bucket_of_digest(Sha256::new_with_prefix(feature.as_bytes()))
}

fn bucket_of_digest(hasher: Sha256) -> (usize, f64) {
    let digest = hasher.finalize();
    let word = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let sign = if digest[4] & 1 == 1 { -1.0 } else { 1.0 };
    (word as usize % DIM, sign)
}

/// The per-bucket sums of weighted features.
struct Sums([f64; DIM]);

impl Sums {
    fn add_feature(&mut self, feature: &str, weight: f64) {
        self.add(Sha256::new_with_prefix(feature.as_bytes()), weight);
    }

    /// Adds the feature whose bytes `hasher` has taken in.
    fn add(&mut self, hasher: Sha256, weight: f64) {
        let (bucket, sign) = bucket_of_digest(hasher);
        self.0[bucket] += sign * weight;
    }
}

/// Data that is not JSON (never stored by the daemon, but possible through the library's raw
/// paths, or nested deeper than serde_json's recursion limit of 128) counts as one string leaf.
fn parse_data(data_json: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(data_json)
        .unwrap_or_else(|_| serde_json::Value::String(data_json.to_owned()))
}

/// The SHA-256 states of `key:<path>` and `value:<path>` for the path walked so far.
#[derive(Clone)]
struct PathHashes {
    key: Sha256,
    value: Sha256,
    empty: bool,
}

impl PathHashes {
    fn root() -> Self {
        PathHashes {
            key: Sha256::new_with_prefix(b"key:"),
            value: Sha256::new_with_prefix(b"value:"),
            empty: true,
        }
    }

    /// The path one segment further: costs the segment's bytes, not the path's.
    fn child(&self, segment: &str) -> Self {
        let mut child = self.clone();
        for hasher in [&mut child.key, &mut child.value] {
            if !self.empty {
                hasher.update(b".");
            }
            hasher.update(segment.as_bytes());
        }
        child.empty = false;
        child
    }
}

/// Adds the features of `value`'s leaves, stopping at [`MAX_LEAVES`]. Recursion depth is
/// bounded by serde_json's parser (128 levels).
fn walk(value: &serde_json::Value, path: &PathHashes, sums: &mut Sums, leaves: &mut usize) {
    use serde_json::Value;
    if *leaves >= MAX_LEAVES {
        return;
    }
    match value {
        // serde_json's map is ordered by key, so objects are walked in byte order of keys.
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                walk(item, &path.child(key), sums, leaves);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let child = path.child("[]");
            for item in items {
                walk(item, &child, sums, leaves);
            }
        }
        leaf => {
            *leaves += 1;
            sums.add(path.key.clone(), WEIGHT_KEY);
            let mut value_hash = path.value.clone();
            value_hash.update(b"=");
            value_hash.update(leaf.to_string().as_bytes());
            sums.add(value_hash, WEIGHT_VALUE);
            if let Value::String(text) = leaf {
                for token in text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|t| !t.is_empty())
                {
                    sums.add_feature(&format!("token:{}", token.to_lowercase()), WEIGHT_TOKEN);
                }
            }
        }
    }
}

/// The weighted features of a footprint as strings, in the order they are summed: the spec's
/// wording, kept to check the hashing walk against (its cost is path length × leaves).
#[cfg(test)]
pub fn features(plugin: &str, operation: &str, data_json: &str) -> Vec<(String, f64)> {
    let mut out = vec![
        (format!("plugin:{plugin}"), WEIGHT_PLUGIN),
        (format!("operation:{operation}"), WEIGHT_OPERATION),
        (
            format!("plugin+operation:{plugin}/{operation}"),
            WEIGHT_PLUGIN_OPERATION,
        ),
    ];
    let mut leaves = 0;
    spelled_out(&parse_data(data_json), "", &mut out, &mut leaves);
    out
}

#[cfg(test)]
fn spelled_out(
    value: &serde_json::Value,
    path: &str,
    out: &mut Vec<(String, f64)>,
    leaves: &mut usize,
) {
    use serde_json::Value;
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                spelled_out(item, &child(key), out, leaves);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                spelled_out(item, &child("[]"), out, leaves);
            }
        }
        leaf => {
            if *leaves >= MAX_LEAVES {
                return;
            }
            *leaves += 1;
            out.push((format!("key:{path}"), WEIGHT_KEY));
            out.push((format!("value:{path}={leaf}"), WEIGHT_VALUE));
            if let Value::String(text) = leaf {
                for token in text
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|t| !t.is_empty())
                {
                    out.push((format!("token:{}", token.to_lowercase()), WEIGHT_TOKEN));
                }
            }
        }
    }
}

/// Cosine similarity of two unit vectors (their dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// A unit vector in 8 bits per component: `round(x × 127)`.
pub fn quantize(vector: &[f32]) -> Vec<i8> {
    vector
        .iter()
        .map(|x| (x * 127.0).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_spec() {
        let f = features(
            "network",
            "create",
            r#"{"mtu":1500,"name":"eth0","addrs":["10.0.0.1/24"]}"#,
        );
        let names: Vec<&str> = f.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "plugin:network",
                "operation:create",
                "plugin+operation:network/create",
                "key:addrs.[]",
                r#"value:addrs.[]="10.0.0.1/24""#,
                "token:10",
                "token:0",
                "token:0",
                "token:1",
                "token:24",
                "key:mtu",
                "value:mtu=1500",
                "key:name",
                r#"value:name="eth0""#,
                "token:eth0",
            ]
        );
    }

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let e = HashingEmbedder;
        let a = e.embed("network", "create", r#"{"name":"eth0"}"#);
        let b = e.embed("network", "create", r#"{ "name" : "eth0" }"#);
        assert_eq!(a, b, "whitespace in the JSON does not matter");
        assert_eq!(a.len(), DIM);
        let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-6, "{norm}");
    }

    #[test]
    fn near_variants_score_above_unrelated_footprints() {
        let e = HashingEmbedder;
        let base = e.embed(
            "network",
            "create",
            r#"{"name":"eth0","mtu":1500,"dhcp":true}"#,
        );
        let near = e.embed(
            "network",
            "create",
            r#"{"name":"eth1","mtu":1500,"dhcp":true}"#,
        );
        let far = e.embed("systemd", "restart", r#"{"unit":"nginx.service"}"#);
        assert!(cosine(&base, &near) > 0.7, "{}", cosine(&base, &near));
        assert!(cosine(&base, &near) > cosine(&base, &far) + 0.3);
    }

    /// The vector summed from the spelled-out features, as the spec words it.
    fn embed_spelled_out(plugin: &str, operation: &str, data: &str) -> Vec<f32> {
        let mut sums = [0f64; DIM];
        for (feature, weight) in features(plugin, operation, data) {
            let (bucket, sign) = bucket_of(&feature);
            sums[bucket] += sign * weight;
        }
        let norm = sums.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return vec![0.0; DIM];
        }
        sums.iter().map(|x| (x / norm) as f32).collect()
    }

    #[test]
    fn the_hashing_walk_gives_the_spelled_out_features_vector() {
        let many: Vec<u32> = (0..5000).collect();
        let samples = [
            r#"{"mtu":1500,"name":"eth0","addrs":["10.0.0.1/24"]}"#.to_owned(),
            r#"{"nested":{"z":[],"a":{},"m":[1,[2,3]]},"ünï":"Grüße Welt ΣΑΣ"}"#.to_owned(),
            r#""just a string""#.to_owned(),
            r#"[{"k":-7},{"k":0.5e3},null,true]"#.to_owned(),
            "{}".to_owned(),
            "not json {".to_owned(),
            serde_json::json!({ "k".repeat(300): many, "a": {"b": {"c": "x y"}} }).to_string(),
        ];
        for data in &samples {
            assert_eq!(
                HashingEmbedder.embed("network", "create", data),
                embed_spelled_out("network", "create", data),
                "{}",
                &data[..data.len().min(80)]
            );
        }
    }

    #[test]
    fn a_long_key_over_many_leaves_costs_its_bytes_not_their_product() {
        // 40 KB key × 4096 leaves: 330 MB of feature strings when paths were spelled out.
        let items: Vec<u8> = vec![1; 8000];
        let data = serde_json::json!({ "k".repeat(40_000): items }).to_string();
        let started = std::time::Instant::now();
        let vector = HashingEmbedder.embed("p", "o", &data);
        assert_eq!(vector.len(), DIM);
        // Debug build on a shared machine; the spelled-out walk took seconds here.
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn huge_documents_stop_at_the_leaf_limit() {
        let items: Vec<u32> = (0..10_000).collect();
        let data = serde_json::to_string(&items).expect("json");
        assert_eq!(features("p", "o", &data).len(), 3 + 2 * MAX_LEAVES);
    }
}
