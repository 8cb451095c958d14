//! Loading: find the config file, parse it by extension, apply the environment
//! and flag layers on top (file < env < flags), then validate.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::layers::{CONFIG_FILE_ENV, apply_env};
use crate::{Config, Error, Overrides, Result};

/// Where the loader looks when neither `-f/--config` nor `REMORA_CONFIG_FILE` is set,
/// relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = ".remora/config.toml";

/// What [`Config::load`] reads.
pub struct LoadOptions<'a> {
    /// `-f/--config`: the config file, overriding `REMORA_CONFIG_FILE`.
    pub file: Option<PathBuf>,
    /// Directory that relative paths and [`DEFAULT_CONFIG_PATH`] are resolved
    /// against. `None`: the process's working directory.
    pub cwd: Option<PathBuf>,
    /// Looks up an environment variable (`|k| std::env::var(k).ok()` in the CLI,
    /// a map in tests).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Flags, applied last.
    pub overrides: Overrides,
}

impl fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("file", &self.file)
            .field("cwd", &self.cwd)
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

/// Which layer set a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A loaded, validated config and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The merged, validated configuration.
    pub config: Config,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Keys set by the environment or flags, in the order applied (later wins).
    pub origins: Vec<(&'static str, Origin)>,
}

impl Loaded {
    /// Which layer set `key` (or a key above it), `None` for a default.
    pub fn origin_of(&self, key: &str) -> Option<Origin> {
        origin_of(&self.origins, self.file.as_deref(), key)
    }
}

/// A config file format, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`
    Toml,
    /// `.json`
    Json,
    /// `.yaml` or `.yml`
    Yaml,
}

impl Format {
    /// The format of `path`, by extension (any case).
    ///
    /// # Errors
    /// [`Error::UnsupportedFormat`] for any other extension.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            _ => Err(Error::UnsupportedFormat {
                path: path.to_owned(),
            }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }
}

impl Config {
    /// Loads the config: the file (see [`LoadOptions::file`]), then the
    /// `REMORA_*` environment variables, then the flags, then validates.
    ///
    /// # Errors
    /// [`Error::Read`], [`Error::UnsupportedFormat`] or [`Error::Parse`] for
    /// the file; [`Error::Env`] / [`Error::Flag`] for unusable values;
    /// [`Error::Invalid`] with every problem, each saying which layer set it.
    pub fn load(options: LoadOptions<'_>) -> Result<Loaded> {
        let LoadOptions {
            file,
            cwd,
            env,
            overrides,
        } = options;
        let cwd = match cwd {
            Some(cwd) => cwd,
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        let file = locate(file, env, &cwd);
        let mut config = match &file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let mut origins = Vec::new();
        apply_env(&mut config, env, &mut origins)?;
        overrides.apply(&mut config, &mut origins)?;
        if let Err(Error::Invalid(mut issues)) = config.validate() {
            for issue in &mut issues.0 {
                issue.origin =
                    origin_of(&origins, file.as_deref(), &issue.key).map(|o| o.to_string());
            }
            return Err(Error::Invalid(issues));
        }
        Ok(Loaded {
            config,
            file,
            origins,
        })
    }

    /// [`Config::load`] with the process's environment and working directory:
    /// what the CLI calls with `-f/--config` and its other flags.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_env_and_overrides(file: Option<PathBuf>, overrides: Overrides) -> Result<Loaded> {
        Config::load(LoadOptions {
            file,
            cwd: None,
            env: &|name| std::env::var(name).ok(),
            overrides,
        })
    }

    /// Parses one config file, by extension, without validating it.
    ///
    /// # Errors
    /// [`Error::Read`], [`Error::UnsupportedFormat`] or [`Error::Parse`]
    /// (unknown keys and wrong types included), all naming the path.
    pub fn from_file(path: &Path) -> Result<Config> {
        let format = Format::of(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_str_as(&text, format).map_err(|source| Error::Parse {
            path: path.to_owned(),
            format: format.name(),
            source,
        })
    }

    /// Parses config text in `format`, without validating it.
    ///
    /// # Errors
    /// The parser's error: syntax, unknown keys, wrong types.
    pub fn from_str_as(
        text: &str,
        format: Format,
    ) -> std::result::Result<Config, Box<dyn std::error::Error + Send + Sync>> {
        Ok(match format {
            Format::Toml => toml::from_str(text)?,
            Format::Json => serde_json::from_str(text)?,
            // A YAML file holding only comments is an empty document, not an error.
            Format::Yaml if is_blank_yaml(text) => Config::default(),
            Format::Yaml => serde_yaml_ng::from_str(text)?,
        })
    }
}

/// The file to read: the explicit one, else `REMORA_CONFIG_FILE`, else
/// [`DEFAULT_CONFIG_PATH`] when it exists.
fn locate(
    explicit: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Option<PathBuf> {
    let chosen = explicit.or_else(|| {
        env(CONFIG_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    match chosen {
        Some(path) => Some(cwd.join(path)),
        None => Some(cwd.join(DEFAULT_CONFIG_PATH)).filter(|p| p.is_file()),
    }
}

fn is_blank_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

/// The last layer that set `key` or a key above it (`fs` for `fs.read_only[2]`);
/// else the file when there is one.
fn origin_of(origins: &[(&'static str, Origin)], file: Option<&Path>, key: &str) -> Option<Origin> {
    let covers = |set: &str| {
        key.strip_prefix(set)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    origins
        .iter()
        .rev()
        .find(|(set, _)| covers(set))
        .map(|(_, origin)| origin.clone())
        .or_else(|| file.map(|f| Origin::File(f.to_owned())))
}

#[cfg(test)]
mod tests;
