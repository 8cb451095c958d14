//! The crate's error type and the validation issue list it carries.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while loading, validating or compiling a config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The config file's extension names no supported format.
    #[error("config file {path}: unsupported format (use a .toml, .json, .yaml or .yml extension)")]
    UnsupportedFormat {
        /// The file that was asked for.
        path: PathBuf,
    },
    /// The config file is not valid for its format, or has unknown keys or wrong types.
    #[error("parsing config file {path} as {format}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// `TOML`, `JSON` or `YAML`.
        format: &'static str,
        /// The parser's own message (it names the key and usually the line).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An environment variable has a value remora cannot use.
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A command-line flag has a value remora cannot use.
    #[error("flag {flag} {value:?}: {message}")]
    Flag {
        /// The flag's name as the CLI spells it.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The merged configuration is invalid; every problem found is listed.
    #[error("{0}")]
    Invalid(Issues),
    /// `REMORA_RESOLVED_CONFIG` does not hold a config this version understands.
    #[error(
        "decoding the resolved config from REMORA_RESOLVED_CONFIG (are the remora CLI and \
         layer the same version?)"
    )]
    Resolved {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem with one key of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted key path, with `[i]` for list items: `fs.read_only[2]`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// Which layer set the key (`REMORA_TARGET`, `--target`, a file), when known.
    pub origin: Option<String>,
}

impl Issue {
    /// An issue with no known origin.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " [set by {origin}]")?;
        }
        Ok(())
    }
}

/// Every problem found in one validation pass, in key order of discovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue::new(key, message));
    }

    /// `Ok(value)` when nothing was recorded, else [`Error::Invalid`].
    pub fn into_result<T>(self, value: T) -> Result<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::Invalid(self))
        }
    }

    /// Moves the issues of a failed compile step into `self`; other errors are
    /// impossible there and are kept as an issue on `key` rather than lost.
    pub(crate) fn absorb<T>(&mut self, key: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(Error::Invalid(issues)) => {
                self.0.extend(issues.0);
                None
            }
            Err(other) => {
                self.push(key, other.to_string());
                None
            }
        }
    }
}

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}
