//! A footprint: one change an op-dbus plugin made, before it becomes a block.
//!
//! Validation lives here so that every way in (D-Bus, library, the streaming receiver) refuses
//! the same things with the same words, before anything reaches the writer, and so that
//! `verify` checks stored blocks by the same rules ([`check_stored`], docs/format.md "Field
//! rules"). Chains written before those rules may hold blocks that break them: only the hard
//! rules every writer enforced ([`check_recorded`]) make such a block corrupt. What is accepted is what every reader of the project reads back unchanged:
//! serde_json (`Block::to_json`, `opdbus-chain get --pretty`) and Python's `json`
//! (tools/verify-chain.py).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Longest plugin or operation name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Default bound on a footprint's data JSON, in bytes.
pub const DEFAULT_MAX_DATA_BYTES: usize = 64 * 1024;
/// Deepest nesting of arrays and objects in footprint data (`[[1]]` is 2 deep). Far below the
/// readers' own limits (serde_json stops at 128, Python at its recursion limit), so every
/// reader, recursive or not, can walk accepted data.
pub const MAX_DATA_DEPTH: usize = 64;
/// A number with a fraction or an exponent must be zero or have its first significant digit
/// at a power of ten within ±this: every reader then holds it as a finite, normal, non-zero
/// double (no overflow to infinity, no underflow to zero). It stays clear of the double
/// range's ends (about ±308), where serde_json's default parser is not correctly rounded and
/// disagrees with Python's (`1.7976931348623158e308`: an error for one, the largest double for
/// the other).
pub const MAX_DECIMAL_EXPONENT: i64 = 300;
/// The characters of a name besides ASCII letters and digits.
pub const NAME_PUNCTUATION: &str = "._-:@/+";

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
    /// `what` names the character, e.g. "U+200B ZERO WIDTH SPACE".
    #[error(
        "{field} contains {what} at byte {at}; names may hold only ASCII letters, digits and \
         {NAME_PUNCTUATION}"
    )]
    UnsafeCharacter {
        field: &'static str,
        what: String,
        at: usize,
    },
    /// A hard rule: no writer ever stored a control character in a name.
    #[error("{field} contains {what} at byte {at}; no writer stores control characters in names")]
    ControlCharacter {
        field: &'static str,
        what: String,
        at: usize,
    },
    #[error("data is {len} bytes of JSON; the limit is {limit}")]
    DataTooLarge { len: usize, limit: usize },
    #[error("data is not valid JSON: {0}")]
    DataNotJson(String),
    #[error("data nests arrays and objects more than {MAX_DATA_DEPTH} deep (at byte {at})")]
    DataTooDeep { at: usize },
    /// `number` is the literal as sent, shortened when long.
    #[error("data holds the number {number} at byte {at}, {why}")]
    DataNumber {
        number: String,
        at: usize,
        why: &'static str,
    },
    #[error(
        "data holds the escape {escape} at byte {at}, half of a UTF-16 surrogate pair without \
         its other half: no character, and readers refuse or mangle it"
    )]
    DataLoneSurrogate { escape: String, at: usize },
    #[error("data holds {0}; the keys of an object must differ, or readers keep only one")]
    DataDuplicateKey(String),
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

    /// A footprint from JSON text, kept byte for byte; the text must be footprint data
    /// ([`check_data_json`]).
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

    /// A footprint as received from a caller, not checked yet: [`PluginFootprint::validate`],
    /// which every append runs before the writer sees a footprint, checks it, cheapest first.
    pub(crate) fn received(plugin_id: String, operation: String, data_json: String) -> Self {
        PluginFootprint {
            plugin_id,
            operation,
            data_json,
        }
    }

    /// The data JSON text.
    pub fn data_json(&self) -> &str {
        &self.data_json
    }

    /// The data JSON text, taken out (the writer moves it into the block instead of copying).
    pub(crate) fn into_data_json(self) -> String {
        self.data_json
    }

    /// Checks every rule, cheapest first: the size of the data against `max_data_bytes`, the
    /// names, then the data's JSON ([`check_stored`]).
    pub fn validate(&self, max_data_bytes: usize) -> Result<(), FootprintError> {
        if self.data_json.len() > max_data_bytes {
            return Err(FootprintError::DataTooLarge {
                len: self.data_json.len(),
                limit: max_data_bytes,
            });
        }
        check_stored(&self.plugin_id, &self.operation, &self.data_json)
    }
}

/// The hard field rules of docs/format.md: what every version of the writer enforced, so a
/// stored block that breaks one was damaged or forged. Names are 1..=[`MAX_NAME_BYTES`] bytes
/// without control characters; data is one JSON value by RFC 8259's grammar, checked as the
/// first writer did (serde_json's `RawValue`: any depth, any number text, lone surrogate
/// escapes and repeated keys allowed). Cost: one pass, no recursion, nothing built.
pub fn check_recorded(
    plugin: &str,
    operation: &str,
    data_json: &str,
) -> Result<(), FootprintError> {
    for (field, name) in [("plugin", plugin), ("operation", operation)] {
        check_name_length(field, name)?;
        if let Some((at, c)) = name.char_indices().find(|&(_, c)| c.is_control()) {
            return Err(FootprintError::ControlCharacter {
                field,
                what: describe(c),
                at,
            });
        }
    }
    serde_json::from_str::<&serde_json::value::RawValue>(data_json)
        .map(|_| ())
        .map_err(|err| FootprintError::DataNotJson(err.to_string()))
}

/// The writer rules of docs/format.md that a stored footprint's fields obey, apart from the
/// configured size limit: what the writer refuses now. They imply the hard rules
/// ([`check_recorded`]). `verify` counts blocks that break them as a warning, not corruption:
/// older writers stored such blocks legitimately.
pub fn check_stored(plugin: &str, operation: &str, data_json: &str) -> Result<(), FootprintError> {
    check_name("plugin", plugin)?;
    check_name("operation", operation)?;
    check_data_json(data_json)
}

/// Checks that `text` is footprint data: one JSON value (RFC 8259) that the project's readers
/// read back unchanged. On top of the grammar: nesting at most [`MAX_DATA_DEPTH`]; integers
/// within i64/u64; other numbers zero or within 10^±[`MAX_DECIMAL_EXPONENT`]; `\u` escapes
/// that pair up (no lone surrogate); distinct keys in every object. (Invalid UTF-8 cannot
/// occur: `text` is a Rust string, and the bus and the block decoder refuse it before.)
///
/// Two passes: a byte scan for depth, numbers and escapes (it bounds the second pass's
/// recursion), then serde_json's parser for the grammar and the keys, building nothing.
pub fn check_data_json(text: &str) -> Result<(), FootprintError> {
    scan(text.as_bytes())?;
    serde_json::from_str::<Checked>(text)
        .map(|_| ())
        .map_err(|err| {
            if err.is_data() {
                // Only our own visitor reports data errors: a repeated key.
                FootprintError::DataDuplicateKey(err.to_string())
            } else {
                FootprintError::DataNotJson(err.to_string())
            }
        })
}

/// Depth, numbers and `\u` escapes, in one pass over the bytes. Text outside the grammar is
/// left to the parser: this pass only refuses what the grammar allows and the rules do not.
/// Scanning bytes is sound on UTF-8: no byte of a multi-byte character is ASCII.
fn scan(bytes: &[u8]) -> Result<(), FootprintError> {
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => at = scan_string(bytes, at + 1)?,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(FootprintError::DataTooDeep { at });
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            b'-' | b'0'..=b'9' => {
                let len = bytes[at..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(bytes.len() - at);
                check_number(&bytes[at..at + len], at)?;
                at += len;
            }
            _ => at += 1,
        }
    }
    Ok(())
}

/// Scans a string from just after its opening quote; returns the offset after its closing one.
fn scan_string(bytes: &[u8], mut at: usize) -> Result<usize, FootprintError> {
    while at < bytes.len() {
        match bytes[at] {
            b'"' => return Ok(at + 1),
            b'\\' if bytes.get(at + 1) == Some(&b'u') => {
                let unit = hex4(bytes, at + 2);
                let low_follows = || {
                    bytes.get(at + 6..at + 8) == Some(b"\\u")
                        && hex4(bytes, at + 8).is_some_and(|u| (0xDC00..0xE000).contains(&u))
                };
                match unit {
                    Some(0xD800..=0xDBFF) if low_follows() => at += 12,
                    Some(0xD800..=0xDFFF) => {
                        let escape = String::from_utf8_lossy(&bytes[at..at + 6]).into_owned();
                        return Err(FootprintError::DataLoneSurrogate { escape, at });
                    }
                    _ => at += 2,
                }
            }
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
    Ok(at)
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// The number rules on one literal (`token`, at byte `at`), decided on its text alone so that
/// no reader's float parsing or formatting enters the rules.
fn check_number(token: &[u8], at: usize) -> Result<(), FootprintError> {
    let refuse = |why| {
        let mut number = String::from_utf8_lossy(&token[..token.len().min(40)]).into_owned();
        if token.len() > 40 {
            number.push('…');
        }
        Err(FootprintError::DataNumber { number, at, why })
    };
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    let unsigned = token.strip_prefix(b"-").unwrap_or(token);
    let (mantissa, exponent) = match unsigned.iter().position(|b| matches!(b, b'e' | b'E')) {
        Some(e) => (&unsigned[..e], Some(&unsigned[e + 1..])),
        None => (unsigned, None),
    };
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(dot) => (&mantissa[..dot], Some(&mantissa[dot + 1..])),
        None => (mantissa, None),
    };
    let (exp_negative, exp_digits) = match exponent {
        Some([b'-', rest @ ..]) => (true, Some(rest)),
        Some([b'+', rest @ ..]) => (false, Some(rest)),
        other => (false, other),
    };
    // Not a number of the grammar: the parser refuses it with its own words.
    if !digits(int) || !frac.is_none_or(digits) || !exp_digits.is_none_or(digits) {
        return Ok(());
    }
    if frac.is_none() && exponent.is_none() {
        // The token is ASCII digits with an optional '-': a valid &str.
        let text = std::str::from_utf8(token).unwrap_or_default();
        let exact = if token[0] == b'-' {
            text.parse::<i64>().is_ok()
        } else {
            text.parse::<u64>().is_ok()
        };
        if !exact {
            return refuse(
                "an integer outside -9223372036854775808..=18446744073709551615, which readers \
                 would round to a float",
            );
        }
        return Ok(());
    }
    let mut significant = int.iter().chain(frac.unwrap_or_default());
    let Some(first) = significant.position(|&b| b != b'0') else {
        return Ok(()); // all digits zero: the value is zero, whatever the exponent
    };
    let mut exp: i64 = 0;
    for &digit in exp_digits.unwrap_or_default() {
        // Saturates far beyond any accepted exponent; the text may be megabytes of digits.
        exp = (exp * 10 + i64::from(digit - b'0')).min(1 << 40);
    }
    if exp_negative {
        exp = -exp;
    }
    let magnitude = int.len() as i64 - 1 - first as i64 + exp;
    if magnitude.abs() > MAX_DECIMAL_EXPONENT {
        return refuse(
            "whose magnitude is outside 1e-300 ≤ |x| < 1e301, where readers would overflow to \
             infinity or lose it to zero",
        );
    }
    Ok(())
}

/// Any JSON value, checked for repeated keys; parsed without building anything.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Checked, A::Error> {
        while items.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Checked, A::Error> {
        let mut keys = Vec::new();
        while let Some(Key(key)) = members.next_key()? {
            members.next_value::<Checked>()?;
            keys.push(key);
        }
        keys.sort_unstable();
        match keys.windows(2).find(|pair| pair[0] == pair[1]) {
            Some(pair) => {
                let mut key: String = pair[0].chars().take(64).collect();
                if key.len() < pair[0].len() {
                    key.push('…');
                }
                Err(de::Error::custom(format_args!(
                    "the key {key:?} twice in one object"
                )))
            }
            None => Ok(Checked),
        }
    }
}

/// An object key, borrowed from the text unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A name is 1..=[`MAX_NAME_BYTES`] bytes of ASCII letters, digits and [`NAME_PUNCTUATION`]:
/// what op-dbus plugins and operations are called (`network`, `login1`, `key_add`,
/// `getty@tty1.service`). Nothing invisible, reordering, spacing or look-alike can hide in
/// a name shown in `tail` or the journal.
fn check_name(field: &'static str, name: &str) -> Result<(), FootprintError> {
    check_name_length(field, name)?;
    if let Some((at, c)) = name.char_indices().find(|&(_, c)| !is_name_char(c)) {
        return Err(FootprintError::UnsafeCharacter {
            field,
            what: describe(c),
            at,
        });
    }
    Ok(())
}

fn check_name_length(field: &'static str, name: &str) -> Result<(), FootprintError> {
    if name.is_empty() {
        return Err(FootprintError::EmptyName { field });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(FootprintError::NameTooLong {
            field,
            len: name.len(),
        });
    }
    Ok(())
}

/// Whether `c` may appear in a plugin or operation name.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || NAME_PUNCTUATION.contains(c)
}

/// The invisible and reordering characters by name: shown as nothing by a terminal or the
/// journal, or changing how the text around them is shown. One table for [`is_hidden`] and
/// for naming refused characters ([`describe`]).
const HIDDEN: &[(u32, &str)] = &[
    (0xAD, "SOFT HYPHEN"),
    (0x034F, "COMBINING GRAPHEME JOINER"),
    (0x061C, "ARABIC LETTER MARK"),
    (0x180E, "MONGOLIAN VOWEL SEPARATOR"),
    (0x200B, "ZERO WIDTH SPACE"),
    (0x200C, "ZERO WIDTH NON-JOINER"),
    (0x200D, "ZERO WIDTH JOINER"),
    (0x200E, "LEFT-TO-RIGHT MARK"),
    (0x200F, "RIGHT-TO-LEFT MARK"),
    (0x2028, "LINE SEPARATOR"),
    (0x2029, "PARAGRAPH SEPARATOR"),
    (0x202A, "LEFT-TO-RIGHT EMBEDDING"),
    (0x202B, "RIGHT-TO-LEFT EMBEDDING"),
    (0x202C, "POP DIRECTIONAL FORMATTING"),
    (0x202D, "LEFT-TO-RIGHT OVERRIDE"),
    (0x202E, "RIGHT-TO-LEFT OVERRIDE"),
    (0x2060, "WORD JOINER"),
    (0x2061, "FUNCTION APPLICATION"),
    (0x2062, "INVISIBLE TIMES"),
    (0x2063, "INVISIBLE SEPARATOR"),
    (0x2064, "INVISIBLE PLUS"),
    (0x2066, "LEFT-TO-RIGHT ISOLATE"),
    (0x2067, "RIGHT-TO-LEFT ISOLATE"),
    (0x2068, "FIRST STRONG ISOLATE"),
    (0x2069, "POP DIRECTIONAL ISOLATE"),
    (0xFEFF, "ZERO WIDTH NO-BREAK SPACE"),
];

fn hidden_name(c: char) -> Option<&'static str> {
    HIDDEN
        .iter()
        .find(|&&(code, _)| code == u32::from(c))
        .map(|&(_, name)| name)
}

/// Whether `c` is a control, invisible or reordering character ([`HIDDEN`]). Names may not
/// hold them; `opdbus-chain` escapes them when it prints data, and names of older chains.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || hidden_name(c).is_some()
}

/// "U+200B ZERO WIDTH SPACE", "U+0007 (a control character)", "U+00E9": a refused character
/// named without printing it, since it may be invisible or reorder the message.
fn describe(c: char) -> String {
    let name = match u32::from(c) {
        0x09 => Some("CHARACTER TABULATION"),
        0x0A => Some("LINE FEED"),
        0x0D => Some("CARRIAGE RETURN"),
        0x20 => Some("SPACE"),
        0xA0 => Some("NO-BREAK SPACE"),
        0x3000 => Some("IDEOGRAPHIC SPACE"),
        _ => hidden_name(c),
    };
    let mut out = format!("U+{:04X}", u32::from(c));
    if let Some(name) = name {
        out = format!("{out} {name}");
    }
    if c.is_control() {
        out.push_str(" (a control character)");
    }
    out
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
                FootprintError::UnsafeCharacter {
                    field: "plugin",
                    what: "U+000A LINE FEED (a control character)".into(),
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

    fn data_error(text: &str) -> FootprintError {
        check_data_json(text).expect_err(text)
    }

    #[test]
    fn ordinary_data_is_accepted_verbatim() {
        for text in [
            "{}",
            "[]",
            " 0 ",
            "null",
            "-0",
            "\"\"",
            r#"{"interface":"eth0","mtu":1500,"up":true,"addrs":["10.0.0.1/24"],"gw":null}"#,
            r#"{"ratio":0.25,"big":18446744073709551615,"small":-9223372036854775808}"#,
            r#"{"e":1e300,"f":-1.5E-300,"g":0e999999,"h":0.000e-99999,"i":12.5e+3}"#,
            r#"{"pair":"\ud83d\ude00","esc":"\"\\\/\b\f\n\r\t\u00e9","raw":"é😀\u2028"}"#,
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":1}]}"#,
            "{\n  \"spaced\" : [ 1 , 2 ]\n}\n",
        ] {
            assert_eq!(check_data_json(text), Ok(()), "{text}");
            let footprint = PluginFootprint::from_json_text("network", "create", text).expect(text);
            assert_eq!(footprint.data_json(), text);
            assert_eq!(footprint.validate(DEFAULT_MAX_DATA_BYTES), Ok(()));
            // Every accepted text reads back with serde_json.
            serde_json::from_str::<serde_json::Value>(text).expect(text);
        }
        let deepest = format!(
            "{}{}",
            "[".repeat(MAX_DATA_DEPTH),
            "]".repeat(MAX_DATA_DEPTH)
        );
        assert_eq!(check_data_json(&deepest), Ok(()));
        let nested = "{\"k\":".repeat(MAX_DATA_DEPTH) + "1" + &"}".repeat(MAX_DATA_DEPTH);
        assert_eq!(check_data_json(&nested), Ok(()));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            data_error(&deep),
            FootprintError::DataTooDeep { at: MAX_DATA_DEPTH }
        );
        let one_too_deep = "{\"k\":".repeat(MAX_DATA_DEPTH) + "[]" + &"}".repeat(MAX_DATA_DEPTH);
        assert!(matches!(
            data_error(&one_too_deep),
            FootprintError::DataTooDeep { .. }
        ));
        // Unbalanced text is still counted, and brackets inside strings are not.
        assert!(matches!(
            data_error(&"[".repeat(10_000)),
            FootprintError::DataTooDeep { .. }
        ));
        let in_strings = format!("[\"{}\"]", "[".repeat(1000));
        assert_eq!(check_data_json(&in_strings), Ok(()));
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for (text, escape, at) in [
            (r#""\ud800""#, r"\ud800", 1),
            (r#"{"k":"x\uDBFFy"}"#, r"\uDBFF", 7),
            (r#"["\udc00"]"#, r"\udc00", 2),
            (r#""\ud800\u0041""#, r"\ud800", 1),
            (r#""\ud800\ud800\udc00""#, r"\ud800", 1),
            (r#"{"\ud800":1}"#, r"\ud800", 2),
        ] {
            assert_eq!(
                data_error(text),
                FootprintError::DataLoneSurrogate {
                    escape: escape.into(),
                    at
                },
                "{text}"
            );
        }
        // An escaped backslash before "u" is no escape.
        assert_eq!(check_data_json(r#""\\ud800""#), Ok(()));
    }

    #[test]
    fn numbers_readers_cannot_hold_are_refused() {
        for (text, at) in [
            ("1e999", 0),
            ("[1, -1E400]", 4),
            ("1e301", 0),
            ("0.1e302", 0),
            ("1e-301", 0),
            ("123e-304", 0),
            // The ends of the double range, where serde_json's default parser and a correctly
            // rounded one (Python's) disagree: an error or 0 for one, a double for the other.
            ("1.7976931348623158e308", 0),
            ("2.4703282292062328e-324", 0),
            ("18446744073709551616", 0),
            ("-9223372036854775809", 0),
            (r#"{"n":100000000000000000000000}"#, 5),
        ] {
            assert!(
                matches!(data_error(text), FootprintError::DataNumber { at: a, .. } if a == at),
                "{text}: {}",
                data_error(text)
            );
        }
        let long = "9".repeat(100_000);
        let message = data_error(&long).to_string();
        assert!(message.len() < 300, "{message}");
        assert!(matches!(
            data_error(&format!("1e{long}")),
            FootprintError::DataNumber { .. }
        ));
    }

    #[test]
    fn duplicate_keys_and_bad_syntax_are_refused() {
        let err = data_error(r#"{"a":1,"b":{"x":1},"a":2}"#);
        assert!(matches!(err, FootprintError::DataDuplicateKey(_)), "{err}");
        assert!(err.to_string().contains("\"a\""), "{err}");
        // Escapes are decoded before comparing.
        assert!(matches!(
            data_error(r#"{"a":1,"\u0061":2}"#),
            FootprintError::DataDuplicateKey(_)
        ));
        for text in [
            "",
            "{not json",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "NaN",
            "Infinity",
            "[1,]",
            "{} {}",
            "\u{feff}{}",
            "\"tab\there\"",
            "'x'",
            "[1e+-5]",
        ] {
            assert!(
                matches!(data_error(text), FootprintError::DataNotJson(_)),
                "{text:?}: {}",
                data_error(text)
            );
        }
    }

    #[test]
    fn names_hold_only_the_safe_set() {
        for name in [
            "network",
            "login1",
            "key_add",
            "getty@tty1.service",
            "org.freedesktop.NetworkManager",
            "a/b:c+d-e",
        ] {
            assert_eq!(check_stored(name, name, "{}"), Ok(()), "{name}");
        }
        for (plugin, what, at) in [
            ("net\u{200b}work", "U+200B ZERO WIDTH SPACE", 3),
            ("\u{202e}krowten", "U+202E RIGHT-TO-LEFT OVERRIDE", 0),
            ("net\u{2028}work", "U+2028 LINE SEPARATOR", 3),
            ("net work", "U+0020 SPACE", 3),
            ("réseau", "U+00E9", 1),
            ("net\u{7f}", "U+007F (a control character)", 3),
            ("x\u{feff}", "U+FEFF ZERO WIDTH NO-BREAK SPACE", 1),
        ] {
            let err = check_stored(plugin, "create", "{}").expect_err(plugin);
            assert_eq!(
                err,
                FootprintError::UnsafeCharacter {
                    field: "plugin",
                    what: what.into(),
                    at
                }
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("{what} at byte {at}")),
                "{message}"
            );
            assert!(
                message.is_ascii(),
                "the message never shows the character: {message}"
            );
        }
        assert!(matches!(
            check_stored("network", "cre\u{2066}ate", "{}"),
            Err(FootprintError::UnsafeCharacter {
                field: "operation",
                ..
            })
        ));
    }

    #[test]
    fn hard_rules_allow_what_older_writers_stored() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let older = [
            ("systemd", "restart dev-disk-by\\x2duuid-1.device", "{}"),
            ("net\u{200b}work", "create", "{}"),
            ("network", "create", deep.as_str()),
            ("network", "create", r#"{"k":"\ud800","a":1,"a":[1e999]}"#),
        ];
        for (plugin, operation, data) in older {
            assert_eq!(
                check_recorded(plugin, operation, data),
                Ok(()),
                "{operation}"
            );
            assert!(
                check_stored(plugin, operation, data).is_err(),
                "{operation}"
            );
        }
        let long = "p".repeat(MAX_NAME_BYTES + 1);
        let broken = [
            ("network", "create", "{not json"),
            ("network", "create", "NaN"),
            ("network", "create", "[1,]"),
            ("network", "create", "\"\u{1}\""),
            ("", "create", "{}"),
            (long.as_str(), "create", "{}"),
            ("net\nwork", "create", "{}"),
            ("network", "cre\u{85}ate", "{}"),
        ];
        for (plugin, operation, data) in broken {
            assert!(check_recorded(plugin, operation, data).is_err(), "{data}");
        }
        assert_eq!(
            check_recorded("network", "a\u{7f}", "{}"),
            Err(FootprintError::ControlCharacter {
                field: "operation",
                what: "U+007F (a control character)".into(),
                at: 1
            })
        );
    }

    #[test]
    fn one_hidden_set_names_and_escapes() {
        for c in [
            '\u{200b}', '\u{202e}', '\u{2028}', '\u{feff}', '\u{2063}', '\n',
        ] {
            assert!(is_hidden(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '\u{3000}'] {
            assert!(!is_hidden(c), "{c:?}");
        }
        assert_eq!(describe('\u{2063}'), "U+2063 INVISIBLE SEPARATOR");
    }

    #[test]
    fn the_genesis_block_passes() {
        let data = r#"{"format_version":1,"chain_id":"00112233445566778899aabbccddeeff","created_ns":1700000000000000000}"#;
        assert_eq!(check_stored("opdbus-blockchain", "genesis", data), Ok(()));
    }

    #[test]
    fn validate_checks_cheapest_first() {
        // Too large and not JSON: the size is reported, the JSON never parsed.
        let footprint = PluginFootprint::received("net work".into(), "o".into(), "[".repeat(100));
        assert_eq!(
            footprint.validate(50),
            Err(FootprintError::DataTooLarge {
                len: 100,
                limit: 50
            })
        );
        assert!(matches!(
            footprint.validate(100),
            Err(FootprintError::UnsafeCharacter { .. })
        ));
        let deep = PluginFootprint::new(
            "p",
            "o",
            serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100)))
                .expect("serde_json reads 100 deep"),
        );
        assert!(matches!(
            deep.validate(DEFAULT_MAX_DATA_BYTES),
            Err(FootprintError::DataTooDeep { .. })
        ));
    }

    #[test]
    #[ignore = "timing; run with --ignored in a debug or release build"]
    fn checking_a_kilobyte_takes_microseconds() {
        let text = serde_json::json!({
            "interface": "eth0", "mtu": 1500, "addrs": ["10.0.0.1/24", "fe80::1/64"],
            "routes": (0..12).map(|i| serde_json::json!({"dst": format!("10.{i}.0.0/16"), "metric": i, "via": "10.0.0.254"})).collect::<Vec<_>>(),
        })
        .to_string();
        let runs = 20_000;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            check_stored("network", "create", &text).expect("valid");
        }
        let each = started.elapsed() / runs;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            serde_json::from_str::<serde_json::Value>(&text).expect("valid");
        }
        let value = started.elapsed() / runs;
        eprintln!(
            "{} bytes: {each:?} per check, {value:?} per serde_json::Value parse",
            text.len()
        );
    }
}
