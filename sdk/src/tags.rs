//! Tags and tag values: validation of PROTOCOL.md §1 and the canonical form (`5 == "5"`).

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest tag name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest string tag value, in bytes.
pub const MAX_VALUE_BYTES: usize = 256;
/// Default bound on the number of tags of a connection or a request (`--max-tags`).
pub const DEFAULT_MAX_TAGS: usize = 64;

/// A problem with a tag set (PROTOCOL.md §1). Each variant names the offending tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagsError {
    /// The tags are not valid JSON.
    #[error("tags are not valid JSON: {0}")]
    InvalidJson(String),
    /// The tags are a JSON value other than an object (or the empty array).
    #[error("tags must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A tag name is empty.
    #[error("tag name must not be empty")]
    EmptyName,
    /// A tag name is longer than 128 bytes.
    #[error("tag name {name:?} is {len} bytes long, the limit is 128")]
    NameTooLong {
        /// The first 32 characters of the name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A string value is longer than 256 bytes.
    #[error("tag {name:?}: value is {len} bytes long, the limit is 256")]
    ValueTooLong {
        /// The tag name.
        name: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// A value is neither a string nor an integer.
    #[error("tag {name:?}: value must be a string or an integer, found {found}")]
    BadValue {
        /// The tag name.
        name: String,
        /// What was found instead.
        found: &'static str,
    },
    /// A number is not an integer that fits i64.
    #[error(
        "tag {name:?}: {number} is not an integer that fits 64 bits (no fraction, no exponent)"
    )]
    NotAnInteger {
        /// The tag name.
        name: String,
        /// The number as written.
        number: String,
    },
    /// More tags than allowed.
    #[error("too many tags: {count}, the limit is {max}")]
    TooMany {
        /// How many tags came.
        count: usize,
        /// The limit (`--max-tags`).
        max: usize,
    },
}

/// One tag value: a string or an integer.
///
/// An integer equals its canonical decimal text: `TagValue::from(5) == TagValue::from("5")`,
/// while `"05"` and `"-0"` are other values.
///
/// ```
/// use tagcast::TagValue;
/// assert_eq!(TagValue::from(5), TagValue::from("5"));
/// assert_ne!(TagValue::from(5), TagValue::from("05"));
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TagValue {
    /// An integer (serialized as a JSON number).
    Integer(i64),
    /// A string (serialized as a JSON string).
    String(String),
}

impl TagValue {
    /// The canonical text of the value: the string itself, or the integer in decimal.
    /// Two values are equal exactly when their canonical texts are.
    pub fn canonical(&self) -> Cow<'_, str> {
        match self {
            TagValue::String(s) => Cow::Borrowed(s),
            TagValue::Integer(i) => Cow::Owned(i.to_string()),
        }
    }
}

impl PartialEq for TagValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TagValue::Integer(a), TagValue::Integer(b)) => a == b,
            (TagValue::String(a), TagValue::String(b)) => a == b,
            _ => self.canonical() == other.canonical(),
        }
    }
}

impl Eq for TagValue {}

impl Hash for TagValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.canonical().hash(state)
    }
}

impl fmt::Display for TagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl From<i64> for TagValue {
    fn from(v: i64) -> Self {
        TagValue::Integer(v)
    }
}

impl From<i32> for TagValue {
    fn from(v: i32) -> Self {
        TagValue::Integer(v.into())
    }
}

impl From<u32> for TagValue {
    fn from(v: u32) -> Self {
        TagValue::Integer(v.into())
    }
}

impl From<&str> for TagValue {
    fn from(v: &str) -> Self {
        TagValue::String(v.to_owned())
    }
}

impl From<String> for TagValue {
    fn from(v: String) -> Self {
        TagValue::String(v)
    }
}

/// A set of tags: names to values, validated by [`Tags::parse`] and [`Tags::from_value`].
///
/// Serializes as a JSON object (`{}` when empty), names in sorted order.
///
/// ```
/// use tagcast::Tags;
/// let tags = Tags::parse(r#"{"language": "FR", "user": 42}"#).unwrap();
/// assert_eq!(tags.get("user").unwrap().canonical(), "42");
/// assert!(Tags::parse(r#"{"language": true}"#).unwrap_err().to_string().contains("language"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(
    /// Sorted by name, names unique. A vector, not a map: a connection has a few tags, and
    /// a `BTreeMap` node would reserve room for eleven (over 600 bytes per connection).
    Vec<(String, TagValue)>,
);

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl Tags {
    /// An empty tag set (matches every connection when used in a request).
    pub fn new() -> Self {
        Tags(Vec::new())
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    /// Builds from pairs with unique names, in any order.
    fn from_unsorted(mut pairs: Vec<(String, TagValue)>) -> Tags {
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.shrink_to_fit();
        Tags(pairs)
    }

    /// Parses and validates tags from JSON text. No bound on the count: see
    /// [`Tags::parse_bounded`] for tags from the network.
    pub fn parse(json: &str) -> Result<Tags, TagsError> {
        Tags::parse_bounded(json, usize::MAX)
    }

    /// Parses and validates tags from JSON text, refusing more than `max` of them
    /// ([`TagsError::TooMany`]): what a handshake's `tags`, or a client's own tags, go through.
    ///
    /// ```
    /// use tagcast::{Tags, TagsError};
    /// let tags = Tags::parse_bounded(r#"{"language": "FR", "user": 42}"#, 2).unwrap();
    /// assert_eq!(tags.len(), 2);
    /// let err = Tags::parse_bounded(r#"{"a": 1, "b": 2, "c": 3}"#, 2).unwrap_err();
    /// assert_eq!(err, TagsError::TooMany { count: 3, max: 2 });
    /// ```
    pub fn parse_bounded(json: &str, max: usize) -> Result<Tags, TagsError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| TagsError::InvalidJson(e.to_string()))?;
        Tags::from_value_bounded(&value, max)
    }

    /// Validates tags from a JSON value: an object, or the empty array `[]` (PHP's empty map).
    /// No bound on the count: see [`Tags::from_value_bounded`].
    pub fn from_value(value: &Value) -> Result<Tags, TagsError> {
        Tags::from_value_bounded(value, usize::MAX)
    }

    /// Like [`Tags::from_value`], refusing more than `max` tags. The count is checked first, so
    /// an oversized set is refused before any of its tags is copied.
    pub fn from_value_bounded(value: &Value, max: usize) -> Result<Tags, TagsError> {
        match value {
            Value::Object(map) => {
                if map.len() > max {
                    return Err(TagsError::TooMany {
                        count: map.len(),
                        max,
                    });
                }
                let mut tags = Vec::with_capacity(map.len());
                for (name, v) in map {
                    check_name(name)?;
                    tags.push((name.clone(), value_of(name, v)?));
                }
                // A JSON object's names are unique once parsed.
                Ok(Tags::from_unsorted(tags))
            }
            Value::Array(a) if a.is_empty() => Ok(Tags::new()),
            other => Err(TagsError::NotAnObject(json_kind(other))),
        }
    }

    /// Fails when there are more than `max` tags.
    pub fn check_count(&self, max: usize) -> Result<(), TagsError> {
        if self.0.len() > max {
            return Err(TagsError::TooMany {
                count: self.0.len(),
                max,
            });
        }
        Ok(())
    }

    /// Adds or replaces one tag, validating it.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<TagValue>,
    ) -> Result<(), TagsError> {
        let name = name.into();
        check_name(&name)?;
        let value = value.into();
        if let TagValue::String(s) = &value {
            check_value_len(&name, s)?;
        }
        match self.position(&name) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
        Ok(())
    }

    /// Removes the tag `name`, returning its value if it had one.
    pub fn remove(&mut self, name: &str) -> Option<TagValue> {
        self.position(name).ok().map(|i| self.0.remove(i).1)
    }

    /// Adds one tag and returns the set, for building tags in one expression.
    ///
    /// # Panics
    /// When the name or value is invalid (PROTOCOL.md §1); use [`Tags::insert`] for untrusted input.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<TagValue>) -> Self {
        if let Err(e) = self.insert(name, value) {
            panic!("{e}");
        }
        self
    }

    /// The value of one tag.
    pub fn get(&self, name: &str) -> Option<&TagValue> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    /// How many tags there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tags, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TagValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether every `(name, value)` pair of `query` is in these tags (an empty query is
    /// contained in everything).
    pub fn contains_all(&self, query: &Tags) -> bool {
        query.iter().all(|(n, v)| self.get(n) == Some(v))
    }

    /// These tags with `defaults` added under them: a name present in both keeps this set's value.
    pub fn merged_over(&self, defaults: &Tags) -> Tags {
        let mut out = defaults.clone();
        for (k, v) in &self.0 {
            match out.position(k) {
                Ok(i) => out.0[i].1 = v.clone(),
                Err(i) => out.0.insert(i, (k.clone(), v.clone())),
            }
        }
        out
    }

    /// The tags as compact JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Tags::from_value(&value).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Tags {
    type Err = TagsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tags::parse(s)
    }
}

impl<N: Into<String>, V: Into<TagValue>> FromIterator<(N, V)> for Tags {
    /// Collects pairs without validation of lengths; prefer [`Tags::insert`] for untrusted input.
    /// A name given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut tags = Tags::new();
        for (n, v) in iter {
            let n = n.into();
            match tags.position(&n) {
                Ok(i) => tags.0[i].1 = v.into(),
                Err(i) => tags.0.insert(i, (n, v.into())),
            }
        }
        tags
    }
}

fn check_name(name: &str) -> Result<(), TagsError> {
    if name.is_empty() {
        return Err(TagsError::EmptyName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(TagsError::NameTooLong {
            name: name.chars().take(32).collect(),
            len: name.len(),
        });
    }
    Ok(())
}

fn check_value_len(name: &str, s: &str) -> Result<(), TagsError> {
    if s.len() > MAX_VALUE_BYTES {
        return Err(TagsError::ValueTooLong {
            name: name.to_owned(),
            len: s.len(),
        });
    }
    Ok(())
}

fn value_of(name: &str, v: &Value) -> Result<TagValue, TagsError> {
    match v {
        Value::String(s) => {
            check_value_len(name, s)?;
            Ok(TagValue::String(s.clone()))
        }
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(TagValue::Integer(i)),
            None => Err(TagsError::NotAnInteger {
                name: name.to_owned(),
                // As JSON writes it, not through `Display`: that would bring core's float
                // formatting (about 15 KB) into the browser SDK for this message alone.
                number: serde_json::to_string(n).unwrap_or_default(),
            }),
        },
        other => Err(TagsError::BadValue {
            name: name.to_owned(),
            found: json_kind(other),
        }),
    }
}

/// A short name of a JSON value's kind, for error texts.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_equal_their_canonical_text() {
        let a = Tags::parse(r#"{"user": 5}"#).unwrap();
        let b = Tags::parse(r#"{"user": "5"}"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Tags::parse(r#"{"user": "05"}"#).unwrap());
        assert_ne!(
            Tags::parse(r#"{"user": 0}"#).unwrap(),
            Tags::parse(r#"{"user": "-0"}"#).unwrap()
        );
    }

    #[test]
    fn rejects_what_section_1_rejects() {
        for (json, needle) in [
            (r#"{"a": 5.0}"#, "\"a\""),
            (r#"{"a": 1e3}"#, "\"a\""),
            (r#"{"b": true}"#, "\"b\""),
            (r#"{"c": null}"#, "\"c\""),
            (r#"{"d": [1]}"#, "\"d\""),
            (r#"{"e": {}}"#, "\"e\""),
            (r#"{"f": 9223372036854775808}"#, "\"f\""),
            (r#"[1]"#, "object"),
            (r#""x""#, "object"),
            (r#"{"": "x"}"#, "empty"),
        ] {
            let err = Tags::parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
        assert!(Tags::parse("[]").unwrap().is_empty());
        let long = "n".repeat(129);
        assert!(Tags::parse(&format!(r#"{{"{long}": 1}}"#)).is_err());
        assert!(Tags::parse(&format!(r#"{{"{}": 1}}"#, "n".repeat(128))).is_ok());
        let v = "v".repeat(257);
        assert!(Tags::parse(&format!(r#"{{"n": "{v}"}}"#)).is_err());
        assert!(Tags::parse(&format!(r#"{{"n": "{}"}}"#, "v".repeat(256))).is_ok());
    }

    #[test]
    fn bounded_parsing_checks_the_count() {
        let three = r#"{"a": 1, "b": "2", "c": 3}"#;
        assert_eq!(Tags::parse_bounded(three, 3).unwrap().len(), 3);
        assert_eq!(
            Tags::parse_bounded(three, 2).unwrap_err(),
            TagsError::TooMany { count: 3, max: 2 }
        );
        assert!(Tags::parse_bounded("[]", 0).unwrap().is_empty());
        assert!(Tags::parse_bounded("{}", 0).unwrap().is_empty());
        // Validation still applies under the bound.
        assert!(matches!(
            Tags::parse_bounded(r#"{"a": true}"#, 5),
            Err(TagsError::BadValue { .. })
        ));
        assert!(matches!(
            Tags::parse_bounded("{", 5),
            Err(TagsError::InvalidJson(_))
        ));
        let value: Value = serde_json::from_str(three).unwrap();
        assert_eq!(
            Tags::from_value_bounded(&value, 1).unwrap_err().to_string(),
            "too many tags: 3, the limit is 1"
        );
    }

    #[test]
    fn serializes_as_object() {
        assert_eq!(Tags::new().to_json(), "{}");
        let t = Tags::new().with("b", 1).with("a", "x");
        assert_eq!(t.to_json(), r#"{"a":"x","b":1}"#);
    }
}
