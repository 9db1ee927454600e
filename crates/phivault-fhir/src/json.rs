//! JSON parsing that refuses duplicate object keys.
//!
//! `serde_json` keeps the last of two equal keys, so `{"resourceType": "Patient",
//! "resourceType": "Observation"}` would be read as an Observation while another reader (a
//! proxy, a client library, an audit viewer) may see a Patient. Every body that comes from
//! outside is parsed here instead: the same `serde_json` parser (same syntax, same nesting
//! limit), with a visitor that builds the [`Value`] and fails on the second occurrence of a
//! key in one object. The error names no key or value (bodies hold PHI); it carries the line
//! and column like any `serde_json` error.
//!
//! Numbers keep their text: the workspace enables `serde_json`'s `arbitrary_precision`, under
//! which the parser hands a number to a visitor as a one-entry map whose key is
//! [`NUMBER_TOKEN`] and whose value is the number as written; it becomes a [`Number`] holding
//! that text (a FHIR decimal's precision is part of its value: `1.50` is not `1.5`). The
//! parser normalizes only an exponent's notation (`1e2` and `1E2` become `1e+2`): digits, value
//! and precision are kept.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The key under which `serde_json` (with `arbitrary_precision`) passes a number's text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// The message of the error a duplicate key raises (see [`is_duplicate_key`]).
pub(crate) const DUPLICATE_KEY: &str = "duplicate object key";

/// Parses `bytes` as one JSON value, refusing duplicate keys in any object.
pub fn from_slice_unique(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = UniqueValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Whether `e` (from [`from_slice_unique`]) is a duplicate key rather than a syntax error.
pub fn is_duplicate_key(e: &serde_json::Error) -> bool {
    e.is_data() && e.to_string().starts_with(DUPLICATE_KEY)
}

/// Builds a [`Value`], refusing duplicate keys at every depth.
#[derive(Clone, Copy)]
struct UniqueValue;

impl<'de> DeserializeSeed<'de> for UniqueValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite float; `Null` is what `Value` itself does.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.is_empty() && key == NUMBER_TOKEN {
                // A number as written; the parser has checked its syntax.
                let text: String = map.next_value()?;
                let number = text
                    .parse::<Number>()
                    .map_err(|_| de::Error::custom("invalid number"))?;
                return Ok(Value::Number(number));
            }
            if out.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn same_value_as_serde_json_without_duplicates() {
        let cases = [
            r#"{"resourceType":"Patient","a":[1,-2,3.5,true,null,"x",{"b":{}}],"c":18446744073709551615}"#,
            "[]",
            "\"s\"",
            "  42 ",
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#,
        ];
        for text in cases {
            let ours = from_slice_unique(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn numbers_keep_their_text() {
        let text =
            r#"{"a":1.50,"b":0.10,"c":1e+2,"d":-0.0,"e":18446744073709551616,"f":[5.40e-3]}"#;
        let v = from_slice_unique(text.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
        assert_eq!(v["a"].as_f64(), Some(1.5));
        assert_eq!(v["c"].as_f64(), Some(100.0));
        // serde_json writes an exponent as `e` and a sign: the digits, and so the value and
        // its precision, are kept; only the notation of the exponent is normalized.
        let v = from_slice_unique(br#"[1e2,5.40E-3]"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "[1e+2,5.40e-3]");
        // An object that merely has that key is an object (a client cannot forge a number).
        let forged = format!(r#"{{"a":{{"{NUMBER_TOKEN}":"1"}}}}"#);
        let v = from_slice_unique(forged.as_bytes()).unwrap();
        assert!(v["a"].is_object() || v["a"].is_number(), "{v}");
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let cases = [
            r#"{"resourceType":"Patient","resourceType":"Observation"}"#,
            r#"{"a":1,"b":2,"a":1}"#,
            r#"{"x":{"id":"1","id":"2"}}"#,
            r#"{"x":[{"k":1},{"k":1,"k":2}]}"#,
            // The same key after JSON unescaping.
            r#"{"id":"1","\u0069d":"2"}"#,
        ];
        for text in cases {
            let e = from_slice_unique(text.as_bytes()).unwrap_err();
            assert!(is_duplicate_key(&e), "{text}: {e}");
            assert!(!e.to_string().contains("Observation"), "{e}");
        }
    }

    #[test]
    fn syntax_errors_and_trailing_data_are_still_errors() {
        for text in ["{", r#"{"a":1}x"#, r#"{"a":1,}"#, "", "[1,]"] {
            let e = from_slice_unique(text.as_bytes()).unwrap_err();
            assert!(!is_duplicate_key(&e), "{text}: {e}");
        }
        // The nesting limit of serde_json still applies (no stack overflow).
        let deep = "[".repeat(100_000);
        assert!(from_slice_unique(deep.as_bytes()).is_err());
    }
}
