//! `remora config schema|check`.

use crate::args::ConfigCommand;
use remora_config::{Config, Overrides};

pub fn run(cmd: ConfigCommand) -> miette::Result<i32> {
    match cmd {
        ConfigCommand::Schema => {
            let schema = remora_config::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(0)
        }
        ConfigCommand::Check { config } => {
            let loaded = Config::from_env_and_overrides(config, Overrides::default())
                .map_err(crate::error::Error::from)?;
            match &loaded.file {
                Some(file) => println!("config file: {}", file.display()),
                None => println!("config file: none (defaults)"),
            }
            for (key, origin) in &loaded.origins {
                println!("  {key}: set by {origin:?}");
            }
            loaded
                .config
                .policies()
                .map_err(crate::error::Error::from)?;
            println!("ok: configuration is valid");
            println!(
                "{}",
                serde_json::to_string_pretty(&loaded.config).unwrap_or_default()
            );
            Ok(0)
        }
    }
}
