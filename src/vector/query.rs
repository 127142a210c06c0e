//! What `FindSimilar` and `opdbus-chain similar` accept as a query.

use crate::chain::block::{parse_hash, Hash};

/// A block to find neighbours of, or a footprint that need not be in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimilarQuery {
    Block(Hash),
    Footprint {
        plugin: String,
        operation: String,
        /// The data as JSON text.
        data: String,
    },
}

const SHAPE: &str =
    r#"a block hash (64 hex digits) or a footprint {"plugin":"…","operation":"…","data":{…}}"#;

/// Largest query text, in bytes (checked before it is parsed): room for a footprint with the
/// largest data a block holds by default (64 KiB), twice over.
pub const MAX_QUERY_BYTES: usize = 128 * 1024;
/// Deepest nesting of the query's data (`{"a":1}` is 1 deep).
pub const MAX_QUERY_DEPTH: usize = 32;
/// Most leaves in the query's data: the embedding looks at no more (`embed::MAX_LEAVES`).
pub const MAX_QUERY_LEAVES: usize = super::embed::MAX_LEAVES;
/// Longest key path in the query's data, in bytes (keys joined with `.`, `[]` per array).
pub const MAX_QUERY_PATH_BYTES: usize = 1024;

impl std::str::FromStr for SimilarQuery {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.len() > MAX_QUERY_BYTES {
            return Err(format!(
                "the query is {} bytes; the limit is {MAX_QUERY_BYTES}",
                text.len()
            ));
        }
        let text = text.trim();
        if let Some(hash) = parse_hash(text) {
            return Ok(SimilarQuery::Block(hash));
        }
        if !text.starts_with('{') {
            let shown: String = text.chars().take(80).collect();
            return Err(format!("'{shown}' is not a query; give {SHAPE}"));
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("the query is not valid JSON ({e}); give {SHAPE}"))?;
        let field = |name: &str| -> Result<String, String> {
            match value.get(name) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(format!(
                    "the query needs a non-empty string \"{name}\"; give {SHAPE}"
                )),
            }
        };
        let plugin = field("plugin")?;
        let operation = field("operation")?;
        if let Some(unknown) = value.as_object().and_then(|o| {
            o.keys()
                .find(|k| !["plugin", "operation", "data"].contains(&k.as_str()))
        }) {
            return Err(format!("unknown query field \"{unknown}\"; give {SHAPE}"));
        }
        if let Some(data) = value.get("data") {
            check_shape(data)?;
        }
        let data = value
            .get("data")
            .map_or_else(|| "{}".to_owned(), |d| d.to_string());
        Ok(SimilarQuery::Footprint {
            plugin,
            operation,
            data,
        })
    }
}

/// Refuses data deeper, with more leaves or longer key paths than the limits above. Walks
/// without recursion; serde_json has already refused nesting beyond 128.
fn check_shape(data: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let (mut leaves, mut deepest, mut longest) = (0usize, 0usize, 0usize);
    // (value, depth of the containers around it, bytes of its key path)
    let mut stack = vec![(data, 0usize, 0usize)];
    while let Some((value, depth, path)) = stack.pop() {
        let dot = usize::from(path > 0);
        match value {
            Value::Object(map) if !map.is_empty() => {
                deepest = deepest.max(depth + 1);
                stack.extend(
                    map.iter()
                        .map(|(k, v)| (v, depth + 1, path + dot + k.len())),
                );
            }
            Value::Array(items) if !items.is_empty() => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|v| (v, depth + 1, path + dot + 2)));
            }
            _ => {
                leaves += 1;
                longest = longest.max(path);
            }
        }
    }
    if deepest > MAX_QUERY_DEPTH {
        return Err(format!(
            "the query's data is nested {deepest} deep; the limit is {MAX_QUERY_DEPTH}"
        ));
    }
    if leaves > MAX_QUERY_LEAVES {
        return Err(format!(
            "the query has {leaves} leaves; the limit is {MAX_QUERY_LEAVES}"
        ));
    }
    if longest > MAX_QUERY_PATH_BYTES {
        return Err(format!(
            "the query has a key path of {longest} bytes; the limit is {MAX_QUERY_PATH_BYTES}"
        ));
    }
    Ok(())
}

/// Largest `k` a search accepts.
pub const MAX_K: u32 = 1000;

/// Checks a requested result count.
pub fn check_k(k: u32) -> Result<usize, String> {
    if (1..=MAX_K).contains(&k) {
        Ok(k as usize)
    } else {
        Err(format!("k must be between 1 and {MAX_K}, not {k}"))
    }
}

/// Refuses a filter whose time range is empty the wrong way round.
pub fn check_filter(filter: &super::Filter) -> Result<(), String> {
    match (filter.since_ns, filter.until_ns) {
        (Some(since), Some(until)) if since > until => {
            Err(format!("since_ns {since} is after until_ns {until}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_footprints_parse_and_the_rest_is_explained() {
        let hash = "ab".repeat(32);
        assert!(matches!(hash.parse(), Ok(SimilarQuery::Block(_))));
        let q: SimilarQuery = r#"{"plugin":"network","operation":"create","data":{"a":1}}"#
            .parse()
            .expect("footprint");
        assert_eq!(
            q,
            SimilarQuery::Footprint {
                plugin: "network".into(),
                operation: "create".into(),
                data: r#"{"a":1}"#.into()
            }
        );
        for bad in [
            "",
            "abc",
            "{",
            r#"{"plugin":"x"}"#,
            r#"{"plugin":"x","operation":"y","extra":1}"#,
        ] {
            let err = bad.parse::<SimilarQuery>().expect_err(bad);
            assert!(err.contains("64 hex digits"), "{bad}: {err}");
        }
    }

    fn query_with(data: serde_json::Value) -> String {
        serde_json::json!({"plugin": "p", "operation": "o", "data": data}).to_string()
    }

    fn refusal(query: &str) -> String {
        query.parse::<SimilarQuery>().expect_err("refused")
    }

    #[test]
    fn queries_beyond_each_limit_are_refused_naming_it() {
        // Bytes first, before any parsing: not even valid JSON is looked at.
        let huge = format!("{{{}", " ".repeat(MAX_QUERY_BYTES));
        assert_eq!(
            refusal(&huge),
            format!("the query is {} bytes; the limit is 131072", huge.len())
        );
        let leaves: Vec<u8> = vec![1; 5000];
        assert_eq!(
            refusal(&query_with(leaves.into())),
            "the query has 5000 leaves; the limit is 4096"
        );
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!([deep]);
        }
        assert_eq!(
            refusal(&query_with(deep)),
            "the query's data is nested 40 deep; the limit is 32"
        );
        let long_path = serde_json::json!({"a": {"k".repeat(1100): [true]}});
        assert_eq!(
            refusal(&query_with(long_path)),
            "the query has a key path of 1105 bytes; the limit is 1024"
        );
    }

    #[test]
    fn queries_at_each_limit_are_accepted() {
        let leaves: Vec<u8> = vec![1; MAX_QUERY_LEAVES];
        let mut deep = serde_json::json!({});
        for _ in 0..MAX_QUERY_DEPTH {
            deep = serde_json::json!([deep, 1]);
        }
        // "a" + "." + 1019 × "k" + "." + "[]" = 1024 bytes.
        let long_path = serde_json::json!({"a": {"k".repeat(1019): [true]}});
        for data in [leaves.into(), deep, long_path] {
            let query = query_with(data);
            assert!(query.len() <= MAX_QUERY_BYTES);
            query.parse::<SimilarQuery>().expect("at the limits");
        }
    }

    #[test]
    fn a_time_range_the_wrong_way_round_is_refused() {
        let mut filter = crate::vector::Filter {
            since_ns: Some(5),
            until_ns: Some(5),
            ..Default::default()
        };
        check_filter(&filter).expect("one instant");
        filter.until_ns = Some(4);
        assert_eq!(
            check_filter(&filter),
            Err("since_ns 5 is after until_ns 4".into())
        );
    }
}
