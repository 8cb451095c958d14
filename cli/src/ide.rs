//! `remora ide intellij --target T -- COMMAND`: IntelliJ-platform run
//! configurations under `<project>/.run/` (shared, version-controllable).
//!
//! A JetBrains plugin cannot be built on this project's machines (Gradle and
//! the IntelliJ Platform artifacts come from repositories they cannot reach;
//! see `docs/ide.md`), so remora writes what every JetBrains IDE understands
//! without a plugin:
//! - a Shell Script configuration running `remora run --target T -- COMMAND`
//!   in the project directory;
//! - with `--jdwp-port P`: the same with a JDWP agent in `JAVA_TOOL_OPTIONS`
//!   (`suspend=n`, listening on 127.0.0.1:P), plus a Remote JVM Debug
//!   configuration attaching to it.

use crate::args::{IdeCommand, IntellijArgs};
use crate::error::{Error, Result};
use std::path::PathBuf;

pub fn run(command: IdeCommand) -> Result<i32> {
    match command {
        IdeCommand::Intellij(args) => {
            for (path, xml) in intellij(&args) {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::Io(format!("creating {}: {e}", dir.display())))?;
                }
                std::fs::write(&path, xml)
                    .map_err(|e| Error::Io(format!("writing {}: {e}", path.display())))?;
                println!("wrote {}", path.display());
            }
            Ok(0)
        }
    }
}

/// Escape `s` for an XML attribute value.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
    out
}

/// The `remora run …` shell command line of the configuration.
pub fn remora_command(args: &IntellijArgs) -> String {
    let q = crate::ext::shell_quote;
    let mut line = format!("remora run --target {}", q(&args.target));
    if let Some(config) = &args.config {
        line.push_str(&format!(" -f {}", q(&config.display().to_string())));
    }
    if let Some(port) = args.jdwp_port {
        let opts = format!(
            "JAVA_TOOL_OPTIONS=-agentlib:jdwp=transport=dt_socket,server=y,suspend=n,address=127.0.0.1:{port}"
        );
        line.push_str(&format!(" --env {}", q(&opts)));
    }
    line.push_str(" --");
    for arg in &args.command {
        line.push(' ');
        line.push_str(&q(arg));
    }
    line
}

/// File name (without directory) for a configuration name.
fn file_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_ ().".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.run.xml")
}

/// The files to write: `(path, contents)`.
pub fn intellij(args: &IntellijArgs) -> Vec<(PathBuf, String)> {
    let dir = args.dir.join(".run");
    let name = xml_escape(&args.name);
    let script = xml_escape(&remora_command(args));
    let mut files = vec![(
        dir.join(file_name(&args.name)),
        format!(
            r#"<component name="ProjectRunConfigurationManager">
  <configuration default="false" name="{name}" type="ShConfigurationType">
    <option name="SCRIPT_TEXT" value="{script}" />
    <option name="INDEPENDENT_SCRIPT_PATH" value="true" />
    <option name="SCRIPT_PATH" value="" />
    <option name="SCRIPT_OPTIONS" value="" />
    <option name="INDEPENDENT_SCRIPT_WORKING_DIRECTORY" value="true" />
    <option name="SCRIPT_WORKING_DIRECTORY" value="$PROJECT_DIR$" />
    <option name="INDEPENDENT_INTERPRETER_PATH" value="true" />
    <option name="INTERPRETER_PATH" value="/bin/sh" />
    <option name="INTERPRETER_OPTIONS" value="" />
    <option name="EXECUTE_IN_TERMINAL" value="true" />
    <option name="EXECUTE_SCRIPT_FILE" value="false" />
    <envs />
    <method v="2" />
  </configuration>
</component>
"#
        ),
    )];
    if let Some(port) = args.jdwp_port {
        let attach = format!("{} (attach JVM debugger)", args.name);
        files.push((
            dir.join(file_name(&attach)),
            format!(
                r#"<component name="ProjectRunConfigurationManager">
  <configuration default="false" name="{}" type="Remote">
    <option name="USE_SOCKET_TRANSPORT" value="true" />
    <option name="SERVER_MODE" value="false" />
    <option name="SHMEM_ADDRESS" />
    <option name="HOST" value="127.0.0.1" />
    <option name="PORT" value="{port}" />
    <option name="AUTO_RESTART" value="false" />
    <RunnerSettings RunnerId="Debug">
      <option name="DEBUG_PORT" value="{port}" />
      <option name="LOCAL" value="false" />
    </RunnerSettings>
    <method v="2" />
  </configuration>
</component>
"#,
                xml_escape(&attach)
            ),
        ));
    }
    files
}

#[cfg(test)]
mod tests;
