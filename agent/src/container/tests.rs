use super::*;

const ID: &str = "4f1c2ab3d5e6f7089a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

fn process(root: &Path, pid: u32, ppid: u32, cgroup: &str) {
    let dir = root.join(pid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup"), cgroup).unwrap();
    std::fs::write(
        dir.join("stat"),
        format!("{pid} (my (odd) app) S {ppid} 1 1 0"),
    )
    .unwrap();
}

#[test]
fn the_containers_init_is_found_under_each_runtimes_cgroup_layout() {
    let layouts = [
        format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope\n"
        ),
        format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n"),
        format!(
            "12:pids:/kubepods/besteffort/pod1234/{ID}\n1:name=systemd:/kubepods/besteffort/pod1234/{ID}\n"
        ),
        format!("0::/system.slice/docker-{ID}.scope\n"),
    ];
    for layout in layouts {
        let root = tempfile::tempdir().unwrap();
        process(root.path(), 1, 0, "0::/init.scope\n");
        process(root.path(), 900, 1, "0::/system.slice/containerd.service\n");
        // The shim's child is the container's init; it has a child of its own.
        process(root.path(), 1200, 900, &layout);
        process(root.path(), 1100, 1200, &layout);
        process(root.path(), 1300, 1, "0::/kubepods.slice/other.scope\n");
        let pid = find_container_pid(root.path(), &format!("containerd://{ID}")).unwrap();
        assert_eq!(pid, 1200, "layout {layout:?}");
    }
}

#[test]
fn a_missing_container_or_a_bad_id_says_so() {
    let root = tempfile::tempdir().unwrap();
    process(root.path(), 1, 0, "0::/init.scope\n");
    let err = find_container_pid(root.path(), ID).unwrap_err();
    assert!(matches!(err, ContainerError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("hostPID"));
    assert!(matches!(
        find_container_pid(root.path(), "abc"),
        Err(ContainerError::InvalidId(_))
    ));
    assert!(matches!(
        find_container_pid(root.path(), "zzzzzzzzzzzzzzzz"),
        Err(ContainerError::InvalidId(_))
    ));
}

#[test]
fn a_prefix_of_the_id_does_not_match() {
    let root = tempfile::tempdir().unwrap();
    process(root.path(), 10, 1, &format!("0::/kubepods/pod1/{ID}ff\n"));
    assert!(find_container_pid(root.path(), ID).is_err());
}
