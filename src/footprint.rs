//! A footprint: one change an op-dbus plugin made, before it becomes a block.
//!
//! Validation lives here so that every way in (D-Bus, library, the streaming receiver) refuses
//! the same things with the same words, before anything reaches the writer.

use serde_json::value::RawValue;

/// Longest plugin or operation name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Default bound on a footprint's data JSON, in bytes.
pub const DEFAULT_MAX_DATA_BYTES: usize = 64 * 1024;

/// One change made by a plugin, as the seed's `PluginFootprint::new(plugin, operation, data)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFootprint {
    pub plugin_id: String,
    pub operation: String,
    /// The data as JSON text; kept exactly as received so the block proves what was sent.
    data_json: String,
}

/// Why a footprint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FootprintError {
    #[error("{field} is empty")]
    EmptyName { field: &'static str },
    #[error("{field} is {len} bytes long; the limit is {MAX_NAME_BYTES}")]
    NameTooLong { field: &'static str, len: usize },
    #[error("{field} contains a control character at byte {at}")]
    ControlCharacter { field: &'static str, at: usize },
    #[error("data is {len} bytes of JSON; the limit is {limit}")]
    DataTooLarge { len: usize, limit: usize },
    #[error("data is not valid JSON: {0}")]
    DataNotJson(String),
}

impl PluginFootprint {
    /// A footprint from a JSON value (serialised compactly).
    pub fn new(
        plugin_id: impl Into<String>,
        operation: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        PluginFootprint {
            plugin_id: plugin_id.into(),
            operation: operation.into(),
            data_json: data.to_string(),
        }
    }

    /// A footprint from JSON text, kept byte for byte; the text must be valid JSON.
    pub fn from_json_text(
        plugin_id: impl Into<String>,
        operation: impl Into<String>,
        data_json: impl Into<String>,
    ) -> Result<Self, FootprintError> {
        let data_json = data_json.into();
        check_data_json(&data_json)?;
        Ok(PluginFootprint {
            plugin_id: plugin_id.into(),
            operation: operation.into(),
            data_json,
        })
    }

    /// The data JSON text.
    pub fn data_json(&self) -> &str {
        &self.data_json
    }

    /// Checks names and size against the limits; `max_data_bytes` bounds the data JSON.
    pub fn validate(&self, max_data_bytes: usize) -> Result<(), FootprintError> {
        check_name("plugin", &self.plugin_id)?;
        check_name("operation", &self.operation)?;
        if self.data_json.len() > max_data_bytes {
            return Err(FootprintError::DataTooLarge {
                len: self.data_json.len(),
                limit: max_data_bytes,
            });
        }
        Ok(())
    }
}

/// The rules of docs/format.md that a stored footprint's fields obey, apart from the configured
/// size limit: what the writer refuses and `verify` reports, one function for both.
pub fn check_stored(plugin: &str, operation: &str, data_json: &str) -> Result<(), FootprintError> {
    check_name("plugin", plugin)?;
    check_name("operation", operation)?;
    check_data_json(data_json)
}

/// Checks that `text` is footprint data: JSON the project's readers can read back.
pub fn check_data_json(text: &str) -> Result<(), FootprintError> {
    serde_json::from_str::<&RawValue>(text)
        .map(|_| ())
        .map_err(|err| FootprintError::DataNotJson(err.to_string()))
}

fn check_name(field: &'static str, name: &str) -> Result<(), FootprintError> {
    if name.is_empty() {
        return Err(FootprintError::EmptyName { field });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(FootprintError::NameTooLong {
            field,
            len: name.len(),
        });
    }
    if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(FootprintError::ControlCharacter { field, at });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_is_kept_verbatim() {
        let text = "{ \"interface\" :\n \"eth0\" }";
        let footprint = PluginFootprint::from_json_text("network", "create", text).expect("valid");
        assert_eq!(footprint.data_json(), text);
    }

    #[test]
    fn invalid_input_is_refused_with_a_reason() {
        assert!(matches!(
            PluginFootprint::from_json_text("network", "create", "{not json"),
            Err(FootprintError::DataNotJson(_))
        ));
        let too_long = "p".repeat(MAX_NAME_BYTES + 1);
        let cases = [
            ("", "create", FootprintError::EmptyName { field: "plugin" }),
            (
                "network",
                "",
                FootprintError::EmptyName { field: "operation" },
            ),
            (
                too_long.as_str(),
                "create",
                FootprintError::NameTooLong {
                    field: "plugin",
                    len: MAX_NAME_BYTES + 1,
                },
            ),
            (
                "net\nwork",
                "create",
                FootprintError::ControlCharacter {
                    field: "plugin",
                    at: 3,
                },
            ),
        ];
        for (plugin, operation, expected) in cases {
            let footprint = PluginFootprint::new(plugin, operation, serde_json::json!({}));
            assert_eq!(footprint.validate(DEFAULT_MAX_DATA_BYTES), Err(expected));
        }
        let big = PluginFootprint::new("p", "o", serde_json::json!("x".repeat(100)));
        assert_eq!(
            big.validate(50),
            Err(FootprintError::DataTooLarge {
                len: 102,
                limit: 50
            })
        );
    }
}
