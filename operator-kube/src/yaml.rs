//! Kubernetes objects as a multi-document YAML stream, the way `kubectl
//! apply -f` reads them.

use serde::Serialize;

/// Every object as its own YAML document (`---` before each).
///
/// # Panics
/// When an object does not serialize, which the typed Kubernetes objects
/// this crate builds always do.
pub fn documents<T: Serialize>(objects: &[T]) -> String {
    objects
        .iter()
        .map(|o| {
            let text = serde_yaml_ng::to_string(o).expect("Kubernetes objects serialize to YAML");
            format!("---\n{text}")
        })
        .collect()
}
