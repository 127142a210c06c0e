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

impl std::str::FromStr for SimilarQuery {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
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

const FILTER_KEYS: &str = "plugin (s), operation (s), uid (u), since_ns (t), until_ns (t)";

/// A search filter from the `a{sv}` of `FindSimilarFiltered`.
pub fn filter_from_dict(
    dict: &std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
) -> Result<super::Filter, String> {
    use zbus::zvariant::Value;
    let mut filter = super::Filter::default();
    for (key, value) in dict {
        let value: &Value = value;
        let wrong = || format!("filter key {key} has the wrong type; accepted: {FILTER_KEYS}");
        match (key.as_str(), value) {
            ("plugin", Value::Str(s)) => filter.plugin = Some(s.to_string()),
            ("operation", Value::Str(s)) => filter.operation = Some(s.to_string()),
            ("uid", Value::U32(n)) => filter.uid = Some(*n),
            ("since_ns", Value::U64(n)) => filter.since_ns = Some(*n),
            ("until_ns", Value::U64(n)) => filter.until_ns = Some(*n),
            ("plugin" | "operation" | "uid" | "since_ns" | "until_ns", _) => return Err(wrong()),
            _ => return Err(format!("unknown filter key {key}; accepted: {FILTER_KEYS}")),
        }
    }
    if let (Some(since), Some(until)) = (filter.since_ns, filter.until_ns) {
        if since > until {
            return Err(format!("since_ns {since} is after until_ns {until}"));
        }
    }
    Ok(filter)
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
}
