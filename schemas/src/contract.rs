//! Versioned event contracts.
//!
//! A contract is a JSON file `schemas/contracts/<name>/v<N>.json`:
//!
//! ```json
//! {
//!   "name": "page_view",
//!   "version": 1,
//!   "description": "A page shown to a user.",
//!   "unknown_fields": "reject",
//!   "fields": [
//!     {"name": "event_time", "type": "timestamp", "required": true, "formats": ["rfc3339", "epoch_ms"]},
//!     {"name": "duration_ms", "type": "int", "default": 0, "coerce": true}
//!   ]
//! }
//! ```
//!
//! Field keys: `name`, `type` (string, int, float, bool, timestamp),
//! `required` (default false), `default` (a JSON value of the field's type,
//! only for optional fields), `coerce` (accept strings for numbers and
//! booleans, numbers for strings; default false), `formats` (timestamps only:
//! `rfc3339` and/or `epoch_ms`; default `["rfc3339"]`), `max_length`
//! (strings only), `doc`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::problem::Problem;
use crate::value::{FieldType, Value, parse_rfc3339_ms};

/// What the decoder does with a JSON key that the contract does not declare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFieldPolicy {
    /// Dead-letter the event: an unknown key is usually a producer bug.
    #[default]
    Reject,
    /// Drop the key and keep the event.
    Ignore,
}

/// Accepted encodings of a timestamp field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// `"2026-11-22T10:00:00.123Z"`.
    Rfc3339,
    /// Integer milliseconds since 1970-01-01T00:00:00Z.
    EpochMs,
}

impl TimestampFormat {
    /// The name used in contract files.
    pub fn name(self) -> &'static str {
        match self {
            TimestampFormat::Rfc3339 => "rfc3339",
            TimestampFormat::EpochMs => "epoch_ms",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractFile {
    name: String,
    version: u32,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    unknown_fields: UnknownFieldPolicy,
    fields: Vec<FieldFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    name: String,
    #[serde(rename = "type")]
    ty: FieldType,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<serde_json::Value>,
    #[serde(default)]
    coerce: bool,
    #[serde(default)]
    formats: Option<Vec<TimestampFormat>>,
    #[serde(default)]
    max_length: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    doc: Option<String>,
}

/// One declared field of a contract.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldSpec {
    /// JSON key and column name.
    pub name: String,
    /// Declared type.
    pub ty: FieldType,
    /// Whether an event without this field (or with null) is invalid.
    pub required: bool,
    /// Value used when an optional field is absent or null.
    pub default: Option<Value>,
    /// Whether strings are accepted for numbers/booleans and scalars for strings.
    pub coerce: bool,
    /// Accepted encodings (timestamps only).
    pub formats: Vec<TimestampFormat>,
    /// Longest accepted string, in bytes.
    pub max_length: Option<usize>,
}

impl FieldSpec {
    /// Whether every decoded event has a non-null value for this field.
    pub fn always_present(&self) -> bool {
        self.required || self.default.is_some()
    }
}

/// A loaded, checked contract version.
#[derive(Clone, Debug)]
pub struct Contract {
    /// Contract name (the directory name).
    pub name: String,
    /// Version number (the `v<N>` of the file name).
    pub version: u32,
    /// Free text.
    pub description: Option<String>,
    /// What to do with undeclared keys.
    pub unknown_fields: UnknownFieldPolicy,
    /// Declared fields, in file order; decoded events store values in this order.
    pub fields: Vec<FieldSpec>,
    index: HashMap<String, usize>,
}

impl Contract {
    /// Position of the field called `name`. A contract's few field names
    /// are compared directly (lengths first), which is cheaper than hashing
    /// `name` (the decoder looks up every key of every event); the hash
    /// index serves contracts of many fields.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        if self.fields.len() <= 16 {
            self.fields
                .iter()
                .position(|f| f.name.len() == name.len() && f.name == name)
        } else {
            self.index.get(name).copied()
        }
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.field_index(name).map(|i| &self.fields[i])
    }

    /// `page_view v2`.
    pub fn label(&self) -> String {
        format!("{} v{}", self.name, self.version)
    }

    /// Comma-separated field names, for "valid choices" in messages.
    pub fn field_names(&self) -> String {
        self.fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses and checks a contract from JSON text. `file` names the source in
    /// problems; `expected` is the (name, version) implied by the file's path.
    pub fn from_json(
        text: &str,
        file: &str,
        expected: Option<(&str, u32)>,
    ) -> Result<Contract, Vec<Problem>> {
        let raw: ContractFile = serde_json::from_str(text).map_err(|e| {
            vec![Problem::new(
                file,
                "",
                format!(
                    "is not a valid contract: {e}; see schemas/contracts/README.md for the format"
                ),
            )]
        })?;
        let mut problems = Vec::new();
        if let Some((name, version)) = expected {
            if raw.name != name {
                problems.push(Problem::new(
                    file,
                    "name",
                    format!(
                        "{:?} does not match its directory {name:?}; rename one of them",
                        raw.name
                    ),
                ));
            }
            if raw.version != version {
                problems.push(Problem::new(
                    file,
                    "version",
                    format!(
                        "{} does not match the file name v{version}.json; make them agree",
                        raw.version
                    ),
                ));
            }
        }
        if !is_identifier(&raw.name) {
            problems.push(Problem::new(
                file,
                "name",
                format!(
                    "{:?} is not a valid name; use lowercase letters, digits and _",
                    raw.name
                ),
            ));
        }
        let mut fields = Vec::with_capacity(raw.fields.len());
        let mut index = HashMap::new();
        for (i, f) in raw.fields.into_iter().enumerate() {
            let path = format!("fields[{i}]");
            if !is_identifier(&f.name) {
                problems.push(Problem::new(
                    file,
                    format!("{path}.name"),
                    format!("{:?} is not a valid field name; use lowercase letters, digits and _, starting with a letter or _", f.name),
                ));
            }
            if index.insert(f.name.clone(), i).is_some() {
                problems.push(Problem::new(
                    file,
                    format!("{path}.name"),
                    format!("field {:?} is declared twice; remove one", f.name),
                ));
            }
            if f.required && f.default.is_some() {
                problems.push(Problem::new(
                    file,
                    format!("{path}.default"),
                    format!("field {:?} is required and has a default; a default only applies to optional fields, so drop one of them", f.name),
                ));
            }
            if f.formats.is_some() && f.ty != FieldType::Timestamp {
                problems.push(Problem::new(
                    file,
                    format!("{path}.formats"),
                    format!(
                        "only timestamp fields take formats, and {:?} is {}",
                        f.name, f.ty
                    ),
                ));
            }
            if f.max_length.is_some() && f.ty != FieldType::String {
                problems.push(Problem::new(
                    file,
                    format!("{path}.max_length"),
                    format!(
                        "only string fields take max_length, and {:?} is {}",
                        f.name, f.ty
                    ),
                ));
            }
            let formats = f
                .formats
                .clone()
                .unwrap_or_else(|| vec![TimestampFormat::Rfc3339]);
            if f.ty == FieldType::Timestamp && formats.is_empty() {
                problems.push(Problem::new(
                    file,
                    format!("{path}.formats"),
                    "is empty; list at least one of \"rfc3339\", \"epoch_ms\"",
                ));
            }
            let default = match &f.default {
                None => None,
                Some(json) => match default_value(json, f.ty, &formats) {
                    Some(v) => Some(v),
                    None => {
                        problems.push(Problem::new(
                            file,
                            format!("{path}.default"),
                            format!(
                                "{json} is not a {} value; give a default of the field's type",
                                f.ty
                            ),
                        ));
                        None
                    }
                },
            };
            fields.push(FieldSpec {
                name: f.name,
                ty: f.ty,
                required: f.required,
                default,
                coerce: f.coerce,
                formats,
                max_length: f.max_length,
            });
        }
        if fields.is_empty() {
            problems.push(Problem::new(
                file,
                "fields",
                "is empty; declare at least the event-time field",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Contract {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            unknown_fields: raw.unknown_fields,
            fields,
            index,
        })
    }
}

fn default_value(
    json: &serde_json::Value,
    ty: FieldType,
    formats: &[TimestampFormat],
) -> Option<Value> {
    match ty {
        FieldType::String => json.as_str().map(|s| Value::String(s.to_string())),
        FieldType::Int => json.as_i64().map(Value::Int),
        FieldType::Float => json.as_f64().map(Value::Float),
        FieldType::Bool => json.as_bool().map(Value::Bool),
        FieldType::Timestamp => match json {
            serde_json::Value::String(s) if formats.contains(&TimestampFormat::Rfc3339) => {
                parse_rfc3339_ms(s).map(Value::Timestamp)
            }
            serde_json::Value::Number(n) if formats.contains(&TimestampFormat::EpochMs) => {
                n.as_i64().map(Value::Timestamp)
            }
            _ => None,
        },
    }
}

/// Whether `name` is usable unquoted as a field, metric or column name:
/// `[a-z_][a-z0-9_]*`, at most 64 bytes.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

/// Every contract version found in a contracts directory.
#[derive(Clone, Debug, Default)]
pub struct ContractRegistry {
    contracts: BTreeMap<String, BTreeMap<u32, Arc<Contract>>>,
}

impl ContractRegistry {
    /// Loads every `<dir>/<name>/v<N>.json`. Every problem of every file is
    /// returned together.
    pub fn load_dir(dir: &Path) -> Result<ContractRegistry, Vec<Problem>> {
        let mut registry = ContractRegistry::default();
        let mut problems = Vec::new();
        let shown = dir.display().to_string();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                return Err(vec![Problem::new(
                    shown,
                    "",
                    format!(
                        "cannot read the contracts directory: {e}; set contracts.dir in strata.toml"
                    ),
                )]);
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for contract_dir in dirs {
            let Some(name) = contract_dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(&contract_dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = files.filter_map(Result::ok).map(|e| e.path()).collect();
            files.sort();
            for file in files {
                let file_name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let shown_file = file.display().to_string();
                let Some(version) = file_name
                    .strip_prefix('v')
                    .and_then(|v| v.strip_suffix(".json"))
                    .and_then(|v| v.parse::<u32>().ok())
                else {
                    if file_name.ends_with(".json") {
                        problems.push(Problem::new(
                            shown_file,
                            "",
                            "is not named v<N>.json; name contract files by version, e.g. v1.json",
                        ));
                    }
                    continue;
                };
                let text = match std::fs::read_to_string(&file) {
                    Ok(text) => text,
                    Err(e) => {
                        problems.push(Problem::new(shown_file, "", format!("cannot be read: {e}")));
                        continue;
                    }
                };
                match Contract::from_json(&text, &shown_file, Some((&name, version))) {
                    Ok(contract) => {
                        registry
                            .contracts
                            .entry(name.clone())
                            .or_default()
                            .insert(version, Arc::new(contract));
                    }
                    Err(mut found) => problems.append(&mut found),
                }
            }
        }
        if problems.is_empty() {
            Ok(registry)
        } else {
            Err(problems)
        }
    }

    /// Adds a contract (tests and tools that build contracts in memory).
    pub fn insert(&mut self, contract: Contract) {
        self.contracts
            .entry(contract.name.clone())
            .or_default()
            .insert(contract.version, Arc::new(contract));
    }

    /// A specific version.
    pub fn get(&self, name: &str, version: u32) -> Option<Arc<Contract>> {
        self.contracts.get(name)?.get(&version).cloned()
    }

    /// The highest version of `name`.
    pub fn latest(&self, name: &str) -> Option<Arc<Contract>> {
        self.contracts.get(name)?.values().next_back().cloned()
    }

    /// Contract names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.contracts.keys().map(String::as_str)
    }

    /// Versions of `name`, ascending.
    pub fn versions(&self, name: &str) -> Vec<Arc<Contract>> {
        self.contracts
            .get(name)
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }
}
