//! `remora operator manifests`: print the operator's install manifests.

use crate::args::OperatorCommand;
use remora_operator_kube::manifests::{self, ManifestOptions};

/// Run an `operator` subcommand; returns the exit code.
pub fn run(command: OperatorCommand) -> i32 {
    match command {
        OperatorCommand::Manifests {
            namespace,
            image,
            queue_split_namespaces,
        } => {
            print!(
                "{}",
                manifests::yaml(&ManifestOptions {
                    namespace,
                    image,
                    queue_split_namespaces,
                })
            );
            0
        }
    }
}
