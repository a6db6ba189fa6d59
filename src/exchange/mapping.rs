//! Claim mappings: a JSON object whose keys ending in `.$` take their value from the JSONPath
//! (RFC 9535, via `serde_json_path`) on the right, evaluated against the input claims; every
//! other key is copied as is, except that nested objects are mapped the same way.
//!
//! ```json
//! {"sub.$": "$.sub", "email.$": "$.email", "provider": "auth0", "org": {"id.$": "$.org_id"}}
//! ```
//!
//! A path that selects nothing leaves its key out; one node gives that value; several nodes
//! give an array of them.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// Mapped output larger than this is refused: a token is not a document store.
pub const MAX_MAPPED_BYTES: usize = 8 * 1024;

/// A validated mapping, its paths parsed once.
#[derive(Debug, Clone)]
pub struct Mapping {
    entries: Vec<(String, Entry)>,
}

#[derive(Debug, Clone)]
enum Entry {
    Path(Box<JsonPath>),
    Literal(Value),
    Nested(Mapping),
}

impl Mapping {
    /// Parses mapping text (a JSON object).
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("the mapping is not JSON: {e}"))?;
        match value {
            Value::Object(map) => Self::from_object(&map, ""),
            _ => Err("the mapping must be a JSON object".into()),
        }
    }

    fn from_object(map: &Map<String, Value>, at: &str) -> Result<Self, String> {
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            if let Some(name) = key.strip_suffix(".$") {
                let Value::String(path) = value else {
                    return Err(format!("{at}{key}: a \".$\" key takes a JSONPath string"));
                };
                let parsed = JsonPath::parse(path)
                    .map_err(|e| format!("{at}{key}: {path:?} is not a JSONPath: {e}"))?;
                if name.is_empty() {
                    return Err(format!("{at}{key}: the claim name is empty"));
                }
                entries.push((name.to_owned(), Entry::Path(Box::new(parsed))));
            } else if let Value::Object(inner) = value {
                let nested = Self::from_object(inner, &format!("{at}{key}."))?;
                entries.push((key.clone(), Entry::Nested(nested)));
            } else {
                entries.push((key.clone(), Entry::Literal(value.clone())));
            }
        }
        Ok(Mapping { entries })
    }

    /// Applies the mapping to `input`.
    pub fn apply(&self, input: &Value) -> Result<Map<String, Value>, String> {
        let out = self.apply_inner(input);
        let size = serde_json::to_vec(&out)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_MAPPED_BYTES {
            return Err(format!(
                "the mapped claims are {size} bytes, more than {MAX_MAPPED_BYTES}"
            ));
        }
        Ok(out)
    }

    fn apply_inner(&self, input: &Value) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, entry) in &self.entries {
            match entry {
                Entry::Literal(v) => {
                    out.insert(key.clone(), v.clone());
                }
                Entry::Nested(m) => {
                    out.insert(key.clone(), Value::Object(m.apply_inner(input)));
                }
                Entry::Path(path) => {
                    let nodes = path.query(input).all();
                    match nodes.len() {
                        0 => {}
                        1 => {
                            out.insert(key.clone(), nodes[0].clone());
                        }
                        _ => {
                            out.insert(
                                key.clone(),
                                Value::Array(nodes.into_iter().cloned().collect()),
                            );
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(m: Value, input: Value) -> Value {
        Value::Object(
            Mapping::parse(&m.to_string())
                .unwrap()
                .apply(&input)
                .unwrap(),
        )
    }

    #[test]
    fn paths_literals_and_nested_objects() {
        let out = map(
            json!({"sub.$": "$.sub", "provider": "auth0", "n": 1, "org": {"id.$": "$.o.id", "kind": "x"}}),
            json!({"sub": "u1", "o": {"id": "acme"}}),
        );
        assert_eq!(
            out,
            json!({"sub": "u1", "provider": "auth0", "n": 1, "org": {"id": "acme", "kind": "x"}})
        );
    }

    #[test]
    fn nothing_selected_leaves_the_key_out_and_many_nodes_make_an_array() {
        let out = map(
            json!({"a.$": "$.missing", "r.$": "$.roles[*]"}),
            json!({"roles": ["x", "y"]}),
        );
        assert_eq!(out, json!({"r": ["x", "y"]}));
    }

    #[test]
    fn a_literal_that_looks_like_a_path_is_copied() {
        let out = map(json!({"p": "$.sub"}), json!({"sub": "u"}));
        assert_eq!(out, json!({"p": "$.sub"}));
    }

    #[test]
    fn bad_mappings_are_refused_with_a_reason() {
        for (m, why) in [
            ("[1]", "object"),
            ("not json", "not JSON"),
            (r#"{"a.$": 1}"#, "JSONPath string"),
            (r#"{"a.$": "$[?"}"#, "not a JSONPath"),
            (r#"{".$": "$.a"}"#, "empty"),
        ] {
            let err = Mapping::parse(m).unwrap_err();
            assert!(err.contains(why), "{m}: {err}");
        }
    }

    #[test]
    fn oversized_output_is_refused() {
        let m = Mapping::parse(r#"{"big.$": "$.big"}"#).unwrap();
        let err = m.apply(&json!({"big": "x".repeat(10_000)})).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
    }
}
