//! A container's securityContext, as a node's runtime honours it: capabilities (the
//! runtime's default set, plus `add`, minus `drop`, `ALL` in either; everything when
//! `privileged`), `runAsUser`/`runAsGroup` (container over pod), `runAsNonRoot` (refused
//! for root: the image's user is unknown, so without `runAsUser` it is root) and
//! `allowPrivilegeEscalation: false` (no_new_privs). The kubelet computes [`Security`]; the
//! container init applies it last, right before exec (after cgroup, namespaces and mounts).

use std::{collections::BTreeSet, str::FromStr};

use caps::{CapSet, Capability, CapsHashSet};
use serde_json::Value;

/// containerd's (and Docker's) default capabilities of a non-privileged container.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// What the container init applies before exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// The capabilities (names without `CAP_`); `None` keeps every one (privileged).
    pub capabilities: Option<BTreeSet<String>>,
    pub user: Option<u32>,
    pub group: Option<u32>,
    pub no_new_privs: bool,
}

fn cap_names(v: &Value) -> impl Iterator<Item = String> + '_ {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|c| c.trim_start_matches("CAP_").to_ascii_uppercase())
}

fn all_names() -> BTreeSet<String> {
    caps::all()
        .iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_owned())
        .collect()
}

impl Security {
    /// From the pod's and the container's securityContext; `Err` is the kubelet's
    /// CreateContainerConfigError message.
    pub fn of(pod: &Value, container: &Value) -> Result<Self, String> {
        let (p, c) = (
            &pod["spec"]["securityContext"],
            &container["securityContext"],
        );
        let pick = |field: &str| {
            if c[field].is_null() {
                p[field].clone()
            } else {
                c[field].clone()
            }
        };
        let user = pick("runAsUser")
            .as_u64()
            .and_then(|u| u32::try_from(u).ok());
        let group = pick("runAsGroup")
            .as_u64()
            .and_then(|g| u32::try_from(g).ok());
        if pick("runAsNonRoot") == Value::Bool(true) {
            match user {
                None => {
                    return Err(
                        "container has runAsNonRoot and image will run as root (the simulator does not know the image's user: set runAsUser)"
                            .to_owned(),
                    );
                }
                Some(0) => return Err("container's runAsUser breaks non-root policy".to_owned()),
                Some(_) => {}
            }
        }
        let capabilities = if c["privileged"] == Value::Bool(true) {
            None
        } else {
            let add: BTreeSet<String> = cap_names(&c["capabilities"]["add"]).collect();
            let drop: BTreeSet<String> = cap_names(&c["capabilities"]["drop"]).collect();
            let mut set: BTreeSet<String> = if drop.contains("ALL") {
                BTreeSet::new()
            } else {
                DEFAULT_CAPS
                    .iter()
                    .map(|c| (*c).to_owned())
                    .filter(|c| !drop.contains(c))
                    .collect()
            };
            if add.contains("ALL") {
                set = all_names();
            } else {
                set.extend(add);
            }
            Some(set)
        };
        Ok(Self {
            capabilities,
            user,
            group,
            no_new_privs: c["allowPrivilegeEscalation"] == Value::Bool(false),
        })
    }

    /// The container init's arguments for this.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(caps) = &self.capabilities {
            args.push(format!(
                "--capabilities={}",
                caps.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        if let Some(u) = self.user {
            args.extend(["--user".to_owned(), u.to_string()]);
        }
        if let Some(g) = self.group {
            args.extend(["--group".to_owned(), g.to_string()]);
        }
        if self.no_new_privs {
            args.push("--no-new-privs".to_owned());
        }
        args
    }
}

/// Applies the capability set (`None`: keep all), then the user and group, then
/// no_new_privs, to the calling process before it execs.
pub fn apply(
    capabilities: Option<&str>,
    user: Option<u32>,
    group: Option<u32>,
    no_new_privs: bool,
) -> Result<(), String> {
    if let Some(list) = capabilities {
        let keep: CapsHashSet = list
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| Capability::from_str(&format!("CAP_{c}")).map_err(|e| format!("{c}: {e}")))
            .collect::<Result<_, _>>()?;
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| format!("bounding {cap}: {e}"))?;
            }
        }
        // Root keeps (inheritable | bounding) across exec: both must be the set.
        let inheritable: CapsHashSet = caps::read(None, CapSet::Inheritable)
            .map_err(|e| e.to_string())?
            .intersection(&keep)
            .copied()
            .collect();
        caps::set(None, CapSet::Inheritable, &inheritable).map_err(|e| e.to_string())?;
    }
    if let Some(g) = group.or(user.map(|_| 0)) {
        let gid = nix::unistd::Gid::from_raw(g);
        nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(gid).map_err(|e| format!("setgid {g}: {e}"))?;
    }
    if let Some(u) = user {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(u))
            .map_err(|e| format!("setuid {u}: {e}"))?;
    }
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capabilities_follow_the_runtime_defaults_add_drop_and_privileged() {
        let pod = json!({"spec": {}});
        let of = |sc: Value| Security::of(&pod, &json!({"securityContext": sc})).unwrap();
        let set = |names: &[&str]| Some(names.iter().map(|n| (*n).to_owned()).collect());
        assert_eq!(
            of(json!(null)).capabilities,
            set(&DEFAULT_CAPS),
            "the runtime's default set"
        );
        assert_eq!(
            of(json!({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}})).capabilities,
            set(&["NET_ADMIN"])
        );
        let mut fewer: BTreeSet<String> = DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect();
        fewer.remove("NET_RAW");
        fewer.insert("SYS_ADMIN".to_owned());
        assert_eq!(
            of(json!({"capabilities": {"drop": ["CAP_NET_RAW"], "add": ["SYS_ADMIN"]}}))
                .capabilities,
            Some(fewer)
        );
        assert_eq!(of(json!({"privileged": true})).capabilities, None);
    }

    #[test]
    fn users_merge_pod_and_container_and_non_root_is_enforced() {
        let pod = json!({"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}});
        let c = json!({"securityContext": {"runAsUser": 2000, "allowPrivilegeEscalation": false}});
        let s = Security::of(&pod, &c).unwrap();
        assert_eq!(
            (s.user, s.group, s.no_new_privs),
            (Some(2000), Some(3000), true)
        );
        let non_root = json!({"securityContext": {"runAsNonRoot": true}});
        assert!(
            Security::of(&json!({"spec": {}}), &non_root)
                .unwrap_err()
                .contains("runAsNonRoot and image will run as root")
        );
        let root = json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0}});
        assert!(
            Security::of(&json!({"spec": {}}), &root)
                .unwrap_err()
                .contains("breaks non-root policy")
        );
    }
}
