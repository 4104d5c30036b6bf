//! JSON request bodies as `JsonData` constraints see them (SPEC 3.4): the
//! body is parsed only when it is declared JSON, a duplicate object key at any
//! depth is refused as ambiguous, and a constraint's path is looked up in the
//! parsed tree and compared by the text of the scalar it finds.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A request body, as far as `JsonData` constraints are concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonBody {
    /// A body declared JSON that parsed, without duplicate keys.
    Json(Value),
    /// Anything else: not declared JSON, or not valid JSON. Every `JsonData`
    /// constraint fails on it.
    NotJson,
}

impl JsonBody {
    /// Reads a buffered body. `content_type` is the request's `Content-Type`
    /// value, if any: unless it is `application/json` or `type/subtype+json`
    /// (parameters such as `; charset=utf-8` allowed, case-insensitive) the
    /// body is `NotJson` unread, and so is invalid JSON.
    ///
    /// A duplicate object key at any depth is `Err` (SPEC 3.4: 400
    /// `ambiguous_json`), because Confluence's parser and ours could read
    /// different values; it is reported as soon as it is met, so it wins over
    /// a syntax error later in the body.
    ///
    /// # Errors
    ///
    /// [`AmbiguousJson`] naming the first key found twice in one object.
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<JsonBody, AmbiguousJson> {
        if !content_type.is_some_and(is_json_media_type) {
            return Ok(JsonBody::NotJson);
        }
        let duplicate = Cell::new(None);
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let parsed = UniqueKeys { duplicate: &duplicate }
            .deserialize(&mut deserializer)
            .and_then(|value| deserializer.end().map(|()| value));
        match (duplicate.take(), parsed) {
            (Some(key), _) => Err(AmbiguousJson { key }),
            (None, Ok(value)) => Ok(JsonBody::Json(value)),
            (None, Err(_)) => Ok(JsonBody::NotJson),
        }
    }
}

/// A JSON body with a duplicate object key: the request is refused rather
/// than guessing which value Confluence would read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate key {key:?} in the JSON body")]
pub struct AmbiguousJson {
    key: String,
}

impl AmbiguousJson {
    /// The reason code of the refusal (SPEC 2.7, 3.4).
    pub fn reason(&self) -> &'static str {
        "ambiguous_json"
    }

    /// The key that occurs twice in one object.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// `application/json` or any `type/subtype+json`, ignoring parameters and case.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let plain_json = kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json");
    !kind.is_empty() && (plain_json || has_json_suffix(subtype))
}

/// `vnd.api+json`, `problem+JSON`; not a bare `+json`.
fn has_json_suffix(subtype: &str) -> bool {
    let subtype = subtype.as_bytes();
    subtype.len() > "+json".len() && subtype[subtype.len() - "+json".len()..].eq_ignore_ascii_case(b"+json")
}

/// Builds a `serde_json::Value` like `serde_json`'s own visitor, but records
/// the first key that repeats within an object and stops there.
#[derive(Clone, Copy)]
struct UniqueKeys<'d> {
    duplicate: &'d Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.duplicate.set(Some(key));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A `JsonData` path (`space.key`, `ancestors.0.id`, `metadata.a\.b`),
/// split into keys once when the rule is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JsonPath {
    text: String,
    keys: Vec<PathKey>,
}

/// A path with an empty key (`a..b`, `.a`, `a.`); `offset` is the byte
/// offset in the path where the empty key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EmptyKey {
    pub(super) offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PathKey {
    key: String,
    /// The key as an array index, when it is all digits.
    index: Option<usize>,
}

impl JsonPath {
    /// Splits `text` at every `.` that is not written `\.`.
    pub(super) fn parse(text: &str) -> Result<JsonPath, EmptyKey> {
        let mut keys = Vec::new();
        let mut key = String::new();
        let mut key_start = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((at, char)) = chars.next() {
            match char {
                '\\' if chars.next_if(|&(_, next)| next == '.').is_some() => key.push('.'),
                '.' => {
                    keys.push(PathKey::new(std::mem::take(&mut key), key_start)?);
                    key_start = at + 1;
                }
                other => key.push(other),
            }
        }
        keys.push(PathKey::new(key, key_start)?);
        Ok(JsonPath {
            text: text.to_owned(),
            keys,
        })
    }

    /// The path as written in the rule.
    pub(super) fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the path, if every step exists.
    pub(super) fn lookup<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.keys.iter().try_fold(root, |value, key| key.step(value))
    }
}

impl PathKey {
    fn new(key: String, offset: usize) -> Result<PathKey, EmptyKey> {
        if key.is_empty() {
            return Err(EmptyKey { offset });
        }
        let all_digits = key.bytes().all(|byte| byte.is_ascii_digit());
        let index = if all_digits { key.parse().ok() } else { None };
        Ok(PathKey { key, index })
    }

    /// One step down: an object is indexed by the key even when it is all
    /// digits, an array only by an all-digit key.
    fn step<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        match value {
            Value::Object(object) => object.get(&self.key),
            Value::Array(items) => items.get(self.index?),
            _ => None,
        }
    }
}

/// The text a constraint regex is matched against: a string's own text, a
/// number, boolean or null as JSON writes it (`serde_json`'s canonical form, so
/// `1.50` reads `1.5`). An object or array has none: `Err` names which it is.
pub(super) fn scalar_text(value: &Value) -> Result<Cow<'_, str>, &'static str> {
    match value {
        Value::String(text) => Ok(Cow::Borrowed(text)),
        Value::Number(number) => Ok(Cow::Owned(number.to_string())),
        Value::Bool(true) => Ok(Cow::Borrowed("true")),
        Value::Bool(false) => Ok(Cow::Borrowed("false")),
        Value::Null => Ok(Cow::Borrowed("null")),
        Value::Object(_) => Err("an object"),
        Value::Array(_) => Err("an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(bytes: &str) -> Result<JsonBody, AmbiguousJson> {
        JsonBody::parse(Some("application/json"), bytes.as_bytes())
    }

    fn duplicate_key(bytes: &str) -> String {
        match parse_json(bytes) {
            Err(ambiguous) => ambiguous.key().to_owned(),
            Ok(body) => panic!("{bytes}: {body:?}"),
        }
    }

    #[test]
    fn json_media_types() {
        for content_type in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            " application/json ",
            "application/vnd.api+json",
            "application/problem+JSON; q=1",
        ] {
            let body = JsonBody::parse(Some(content_type), b"{}").unwrap();
            assert_eq!(body, JsonBody::Json(json!({})), "{content_type}");
        }
    }

    #[test]
    fn other_media_types_are_not_json() {
        for content_type in [
            None,
            Some(""),
            Some("text/plain"),
            Some("json"),
            Some("application/jsonp"),
            Some("application/x-www-form-urlencoded"),
            Some("text/json"),
            Some("application/+json"),
            Some("/json"),
        ] {
            let body = JsonBody::parse(content_type, br#"{"a":1}"#).unwrap();
            assert_eq!(body, JsonBody::NotJson, "{content_type:?}");
        }
    }

    #[test]
    fn invalid_json_is_not_json() {
        for bytes in ["", " ", "{", r#"{"a":1} x"#, "{'a':1}", "[1,]", "\u{feff}{}", "nul"] {
            assert_eq!(parse_json(bytes).unwrap(), JsonBody::NotJson, "{bytes:?}");
        }
        let not_utf8 = JsonBody::parse(Some("application/json"), b"\"\xff\"").unwrap();
        assert_eq!(not_utf8, JsonBody::NotJson);
    }

    #[test]
    fn valid_json_builds_the_tree() {
        let body = parse_json(r#" {"a":[1,-2,3.5,true,null,"s"],"b":{"c":{}}} "#).unwrap();
        assert_eq!(body, JsonBody::Json(json!({"a":[1,-2,3.5,true,null,"s"],"b":{"c":{}}})));
        assert_eq!(parse_json("42").unwrap(), JsonBody::Json(json!(42)));
    }

    #[test]
    fn nesting_too_deep_is_not_json() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_json(&deep).unwrap(), JsonBody::NotJson);
    }

    #[test]
    fn duplicate_keys_at_top_level() {
        assert_eq!(duplicate_key(r#"{"title":"a","type":"page","title":"b"}"#), "title");
    }

    #[test]
    fn duplicate_keys_nested() {
        assert_eq!(duplicate_key(r#"{"space":{"key":"DOCS","key":"PM"}}"#), "key");
        assert_eq!(duplicate_key(r#"{"a":[{"id":1},{"id":2,"id":3}]}"#), "id");
    }

    #[test]
    fn duplicate_keys_compare_after_unescaping() {
        assert_eq!(duplicate_key(r#"{"type":"page","\u0074ype":"blogpost"}"#), "type");
    }

    #[test]
    fn equal_keys_in_different_objects_are_fine() {
        let body = parse_json(r#"{"key":1,"space":{"key":2},"list":[{"key":3},{"key":4}]}"#);
        assert!(matches!(body, Ok(JsonBody::Json(_))));
    }

    #[test]
    fn a_duplicate_before_a_syntax_error_is_still_ambiguous() {
        assert_eq!(duplicate_key(r#"{"a":1,"a":2"#), "a");
    }

    #[test]
    fn duplicates_in_a_body_not_declared_json_are_not_read() {
        let body = JsonBody::parse(Some("text/plain"), br#"{"a":1,"a":2}"#).unwrap();
        assert_eq!(body, JsonBody::NotJson);
    }

    #[test]
    fn ambiguous_json_names_the_key() {
        let error = parse_json(r#"{"a\"b":1,"a\"b":2}"#).unwrap_err();
        assert_eq!(error.reason(), "ambiguous_json");
        assert_eq!(error.to_string(), r#"duplicate key "a\"b" in the JSON body"#);
    }

    fn keys(path: &str) -> Vec<(String, Option<usize>)> {
        let path = JsonPath::parse(path).unwrap();
        path.keys.into_iter().map(|key| (key.key, key.index)).collect()
    }

    #[test]
    fn path_keys_and_indexes() {
        let expected = [
            ("ancestors".to_owned(), None),
            ("0".to_owned(), Some(0)),
            ("id".to_owned(), None),
        ];
        assert_eq!(keys("ancestors.0.id"), expected);
        assert_eq!(keys(r"a\.b.c"), [("a.b".to_owned(), None), ("c".to_owned(), None)]);
        assert_eq!(keys(r"a\b"), [(r"a\b".to_owned(), None)]);
        assert_eq!(
            keys("99999999999999999999999"),
            [("99999999999999999999999".to_owned(), None)]
        );
        assert_eq!(keys("1\\.5"), [("1.5".to_owned(), None)]);
    }

    #[test]
    fn path_with_empty_keys() {
        assert_eq!(JsonPath::parse("a..b"), Err(EmptyKey { offset: 2 }));
        assert_eq!(JsonPath::parse(".a"), Err(EmptyKey { offset: 0 }));
        assert_eq!(JsonPath::parse("a."), Err(EmptyKey { offset: 2 }));
        assert_eq!(JsonPath::parse(""), Err(EmptyKey { offset: 0 }));
    }

    #[test]
    fn lookup_follows_objects_and_arrays() {
        let root = json!({"a":[{"b":"x"}],"o":{"1":"one"},"s":"str"});
        let lookup = |path: &str| JsonPath::parse(path).unwrap().lookup(&root).cloned();
        assert_eq!(lookup("a.0.b"), Some(json!("x")));
        assert_eq!(lookup("o.1"), Some(json!("one")));
        assert_eq!(lookup("a.1"), None);
        assert_eq!(lookup("a.b"), None);
        assert_eq!(lookup("s.0"), None);
        assert_eq!(lookup("missing"), None);
    }

    #[test]
    fn scalar_texts() {
        assert_eq!(scalar_text(&json!("text")).unwrap(), "text");
        assert_eq!(scalar_text(&json!(42)).unwrap(), "42");
        assert_eq!(scalar_text(&json!(-1.5)).unwrap(), "-1.5");
        assert_eq!(scalar_text(&json!(true)).unwrap(), "true");
        assert_eq!(scalar_text(&json!(null)).unwrap(), "null");
        assert_eq!(scalar_text(&json!({})), Err("an object"));
        assert_eq!(scalar_text(&json!([])), Err("an array"));
    }

    /// Decision: numbers match in serde_json's canonical form, not as written.
    #[test]
    fn numbers_read_in_canonical_form() {
        let JsonBody::Json(root) = parse_json(r#"[1.50, 1e2, 10]"#).unwrap() else {
            panic!("not JSON");
        };
        let texts: Vec<_> = root
            .as_array()
            .unwrap()
            .iter()
            .map(|n| scalar_text(n).unwrap())
            .collect();
        assert_eq!(texts, ["1.5", "100.0", "10"]);
    }

    /// Found by fuzzing: without serde_json's `float_roundtrip`, a number
    /// beyond u64 read one ulp off, so the text a rule saw was not the value
    /// Confluence reads (and what serde_json wrote did not read back).
    #[test]
    fn numbers_read_correctly_rounded() {
        for written in [
            "18447461616166161616",
            "1844670347474709551616161616",
            "2.2250738585072011e-308",
        ] {
            let JsonBody::Json(value) = parse_json(written).unwrap() else {
                panic!("{written}: not JSON");
            };
            let exact: f64 = written.parse().unwrap();
            assert_eq!(value.as_f64(), Some(exact), "{written}");
            let again = parse_json(&serde_json::to_string(&value).unwrap()).unwrap();
            assert_eq!(again, JsonBody::Json(value), "{written}");
        }
    }
}
