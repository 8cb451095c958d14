//! A spinner on a terminal while remora starts; nothing when stderr is not one.

use crate::session::Reporter;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Shows what remora is doing while the user waits.
#[derive(Debug, Default)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn new() -> Progress {
        Progress(None)
    }

    pub fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for Progress {
    fn step(&mut self, message: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.to_string());
            return;
        }
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} remora: {msg}") {
            bar.set_style(style);
        }
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(80));
        self.0 = Some(bar);
    }
}
