//! Reading one YAML file: the size cap, the syntax check, and the Kubernetes-style
//! envelope (`apiVersion`, `kind`, optional `metadata`, `spec`) or the flat form with
//! the spec's keys at the top level, both of which openvox-code accepts.
//!
//! The text is parsed twice: first as a generic value (to tell bad YAML from a schema
//! mistake and to look at `apiVersion`/`kind` before the spec is judged), then into
//! the typed schema straight from the text, so schema errors keep their line numbers.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::checks::de_with;
use crate::error::{Error, ErrorKind};

/// The only `apiVersion` openvox-code has defined.
pub const API_VERSION: &str = "openvox.voxpupuli.org/v1alpha1";

/// Largest file accepted, in bytes. Real configurations are a few KiB; the cap keeps a
/// hostile ConfigMap or repository from making the controller parse megabytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound = "T: Deserialize<'de> + Default")]
struct Envelope<T> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    /// Accepted so files can carry labels or a name; nothing here reads it.
    #[serde(rename = "metadata", default)]
    _metadata: Option<Mapping>,
    #[serde(deserialize_with = "de_with::nullable")]
    spec: T,
}

/// Refuses a file over [`MAX_FILE_BYTES`], then parses it as generic YAML.
pub(crate) fn parse_value(file: &str, text: &str) -> Result<Value, Error> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Error::new(
            ErrorKind::TooLarge,
            file,
            format!(
                "file is {} bytes, more than the {MAX_FILE_BYTES} bytes accepted",
                text.len()
            ),
        ));
    }
    serde_yaml::from_str(text).map_err(|e| Error::from_yaml(ErrorKind::Syntax, file, &e))
}

/// Parses `text` into the typed schema, reporting mismatches as schema errors.
pub(crate) fn typed<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Error> {
    serde_yaml::from_str(text).map_err(|e| Error::from_yaml(ErrorKind::Schema, file, &e))
}

/// Reads a document of `kind` in either form and returns its spec. An empty file is an
/// empty spec, as openvox-code reads it.
pub(crate) fn parse_document<T>(file: &str, text: &str, kind: &str) -> Result<T, Error>
where
    T: DeserializeOwned + Default,
{
    let value = parse_value(file, text)?;
    let top = match &value {
        Value::Null => return Ok(T::default()),
        Value::Mapping(top) => top,
        _ => {
            return Err(Error::new(
                ErrorKind::Schema,
                file,
                format!("expected a mapping (a {kind} or its spec) at the top level"),
            ));
        }
    };
    let api_version = top.get("apiVersion");
    let found_kind = top.get("kind");
    if api_version.is_none() && found_kind.is_none() {
        return typed(file, text);
    }
    check_envelope_field(file, text, "apiVersion", api_version, API_VERSION)?;
    check_envelope_field(file, text, "kind", found_kind, kind)?;
    let envelope: Envelope<T> = typed(file, text)?;
    Ok(envelope.spec)
}

fn check_envelope_field(
    file: &str,
    text: &str,
    key: &str,
    found: Option<&Value>,
    expected: &str,
) -> Result<(), Error> {
    let message = match found {
        Some(Value::String(found)) if found == expected => return Ok(()),
        Some(Value::String(found)) => format!("expected `{expected}`, found `{found}`"),
        Some(_) => format!("expected the string `{expected}`"),
        None => format!("missing; expected `{expected}`"),
    };
    let mut error = Error::new(ErrorKind::Envelope, file, message).with_key(key);
    if let Some(line) = top_level_line(text, key) {
        error = error.at(line, 1);
    }
    Err(error)
}

/// The 1-based line where `key:` starts a line at column 1, for errors about values
/// seen through the generic parse (which keeps no positions).
fn top_level_line(text: &str, key: &str) -> Option<usize> {
    let plain = format!("{key}:");
    let quoted = format!("\"{key}\":");
    text.lines()
        .position(|line| line.starts_with(&plain) || line.starts_with(&quoted))
        .map(|i| i + 1)
}
