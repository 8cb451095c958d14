//! The kubelet side of volumes: each volume of a pod becomes a directory on this machine
//! (`<state>/volumes/<pod uid>/<volume>`, or the path itself for `hostPath`), filled once when
//! the pod starts: configMap, secret (decoded), emptyDir, hostPath, downwardAPI and projected
//! (serviceAccountToken, configMap, secret, downwardAPI). The containers' inits mount them
//! (see `mounts.rs`). Updates of a configMap or secret are not propagated to running pods.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::{Kubelet, env::decode_base64_bytes, mounts::MountSpec, s};

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Writes `files` (relative path → content) under `dir`.
fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (path, content) in files {
        if path.starts_with('/') || path.split('/').any(|seg| seg == "..") {
            return Err(other(format!("invalid volume item path {path:?}")));
        }
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, content)?;
    }
    Ok(())
}

/// Keys of a configMap or secret as files, honouring `items` (key → path).
fn key_files(data: &[(String, Vec<u8>)], items: &Value) -> io::Result<Vec<(String, Vec<u8>)>> {
    let Some(items) = items.as_array() else {
        return Ok(data.to_vec());
    };
    items
        .iter()
        .map(|item| {
            let key = s(&item["key"]);
            data.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| (s(&item["path"]).to_owned(), v.clone()))
                .ok_or_else(|| other(format!("key {key:?} not found")))
        })
        .collect()
}

impl Kubelet {
    /// The directory holding a pod's prepared volumes.
    pub(super) fn volumes_dir(&self, uid: &str) -> PathBuf {
        self.logs
            .dir
            .parent()
            .unwrap_or(&self.logs.dir)
            .join("volumes")
            .join(uid)
    }

    /// `configmaps` or `secrets` data as (key, bytes); `None` when absent.
    fn object_data(&self, plural: &str, ns: &str, name: &str) -> Option<Vec<(String, Vec<u8>)>> {
        let reg = self.store.registry();
        let obj = self
            .store
            .get(reg.find("", "v1", plural)?, Some(ns), name)
            .ok()?;
        let mut out = Vec::new();
        for (k, v) in obj["data"].as_object().into_iter().flatten() {
            let bytes = if plural == "secrets" {
                decode_base64_bytes(s(v))
            } else {
                s(v).as_bytes().to_vec()
            };
            out.push((k.clone(), bytes));
        }
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            out.push((k.clone(), decode_base64_bytes(s(v))));
        }
        Some(out)
    }

    fn source_files(
        &self,
        pod: &Value,
        plural: &str,
        name: &str,
        src: &Value,
    ) -> io::Result<Vec<(String, Vec<u8>)>> {
        let ns = s(&pod["metadata"]["namespace"]);
        match self.object_data(plural, ns, name) {
            Some(data) => key_files(&data, &src["items"]),
            None if src["optional"] == Value::Bool(true) => Ok(Vec::new()),
            None => Err(other(format!(
                "{} {name:?} not found",
                plural.trim_end_matches('s')
            ))),
        }
    }

    fn downward_files(&self, pod: &Value, src: &Value) -> Vec<(String, Vec<u8>)> {
        src["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                let mut cur = pod;
                for seg in s(&item["fieldRef"]["fieldPath"]).split('.') {
                    cur = &cur[seg];
                }
                let value = match cur {
                    Value::String(v) => v.clone(),
                    Value::Object(map) => map
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"\n", s(v)))
                        .collect(),
                    _ => String::new(),
                };
                (s(&item["path"]).to_owned(), value.into_bytes())
            })
            .collect()
    }

    /// Prepares every volume of `pod`; returns volume name → directory on this machine, or
    /// `None` for a missing hostPath without a type, which is not mounted (a node's runtime
    /// would create a directory on the host there; the simulator leaves the host alone).
    pub(super) fn prepare_volumes(
        &self,
        pod: &Value,
    ) -> io::Result<HashMap<String, Option<PathBuf>>> {
        let uid = s(&pod["metadata"]["uid"]);
        let ns = s(&pod["metadata"]["namespace"]);
        let base = self.volumes_dir(uid);
        let mut out = HashMap::new();
        for vol in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = s(&vol["name"]).to_owned();
            let dir = base.join(&name);
            let path = if vol["hostPath"].is_object() {
                let path = PathBuf::from(s(&vol["hostPath"]["path"]));
                let kind = s(&vol["hostPath"]["type"]);
                if !path.exists() {
                    match kind {
                        "DirectoryOrCreate" => std::fs::create_dir_all(&path)?,
                        "FileOrCreate" => std::fs::write(&path, b"")?,
                        "" => {
                            out.insert(name, None);
                            continue;
                        }
                        _ => {
                            return Err(other(format!(
                                "hostPath {} of volume {name:?} does not exist",
                                path.display()
                            )));
                        }
                    }
                }
                path
            } else if vol["configMap"].is_object() {
                let src = &vol["configMap"];
                write_files(
                    &dir,
                    &self.source_files(pod, "configmaps", s(&src["name"]), src)?,
                )?;
                dir
            } else if vol["secret"].is_object() {
                let src = &vol["secret"];
                write_files(
                    &dir,
                    &self.source_files(pod, "secrets", s(&src["secretName"]), src)?,
                )?;
                dir
            } else if vol["downwardAPI"].is_object() {
                write_files(&dir, &self.downward_files(pod, &vol["downwardAPI"]))?;
                dir
            } else if vol["projected"].is_object() {
                let mut files = Vec::new();
                for src in vol["projected"]["sources"].as_array().into_iter().flatten() {
                    if src["serviceAccountToken"].is_object() {
                        let sa = match s(&pod["spec"]["serviceAccountName"]) {
                            "" => "default",
                            sa => sa,
                        };
                        // A token the simulator authenticates (see api.rs, TokenReview).
                        let token = format!("remora-sim-sa:{ns}:{sa}");
                        files.push((
                            s(&src["serviceAccountToken"]["path"]).to_owned(),
                            token.into_bytes(),
                        ));
                    } else if src["configMap"].is_object() {
                        let c = &src["configMap"];
                        files.extend(self.source_files(pod, "configmaps", s(&c["name"]), c)?);
                    } else if src["secret"].is_object() {
                        let c = &src["secret"];
                        files.extend(self.source_files(pod, "secrets", s(&c["name"]), c)?);
                    } else if src["downwardAPI"].is_object() {
                        files.extend(self.downward_files(pod, &src["downwardAPI"]));
                    }
                }
                write_files(&dir, &files)?;
                dir
            } else {
                // emptyDir, and kinds the simulator does not know: an empty directory.
                std::fs::create_dir_all(&dir)?;
                dir
            };
            out.insert(name, Some(path));
        }
        Ok(out)
    }

    /// The bind mounts of one container.
    pub(super) fn container_mounts(
        container: &Value,
        volumes: &HashMap<String, Option<PathBuf>>,
    ) -> io::Result<Vec<MountSpec>> {
        container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|vm| {
                let name = s(&vm["name"]);
                let source = match volumes.get(name) {
                    None => {
                        return Some(Err(other(format!(
                            "volumeMount {name:?} names no volume of the pod"
                        ))));
                    }
                    Some(None) => return None,
                    Some(Some(source)) => source,
                };
                let sub = s(&vm["subPath"]);
                Some(Ok(MountSpec {
                    source: if sub.is_empty() {
                        source.clone()
                    } else {
                        source.join(sub)
                    },
                    target: PathBuf::from(s(&vm["mountPath"])),
                    read_only: vm["readOnly"] == Value::Bool(true),
                }))
            })
            .collect()
    }
}
