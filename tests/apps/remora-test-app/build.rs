//! Records whether the build script ran with the layer or could see the pod's file.

fn main() {
    // A new `remora test` run has a new session file: run again every time.
    println!("cargo:rerun-if-env-changed=REMORA_SESSION_FILE");
    println!("cargo:rerun-if-env-changed=LD_PRELOAD");
    println!("cargo:rerun-if-env-changed=POD_FILE");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
    let layer = maps.contains("libremora_layer") || preload.contains("libremora_layer");
    let pod_file = std::env::var("POD_FILE")
        .map(|p| std::path::Path::new(&p).exists())
        .unwrap_or(false);
    println!("cargo:rustc-env=BUILD_SCRIPT_HAD_LAYER={layer}");
    println!("cargo:rustc-env=BUILD_SCRIPT_SAW_POD_FILE={pod_file}");
}
