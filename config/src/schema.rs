//! The JSON Schema of the config file (`remora config schema`), for editors and CI.

use crate::Config;

/// The JSON Schema (draft 2020-12) of a config file; a file's keys are all optional.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(Config).to_value()
}

#[cfg(test)]
mod tests;
