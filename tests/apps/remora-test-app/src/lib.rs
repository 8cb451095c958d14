//! The test reads `$POD_FILE`, a file only the target pod has, and prints a
//! report line: what the compiler and the build script saw, whether the test
//! process itself has the layer, and the file's first line.

#[cfg(test)]
mod tests {
    const COMPILER: (bool, bool) = remora_test_app_macros::compiler_report!();

    #[test]
    fn reads_a_file_only_the_pod_has() {
        let path = std::env::var("POD_FILE").expect("POD_FILE names the pod's file");
        let body = std::fs::read_to_string(&path).expect("reading the pod's file");
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        println!(
            "REPORT rustc_had_layer={} rustc_saw_pod_file={} build_script_had_layer={} \
             build_script_saw_pod_file={} test_has_layer={} first_line={}",
            COMPILER.0,
            COMPILER.1,
            env!("BUILD_SCRIPT_HAD_LAYER"),
            env!("BUILD_SCRIPT_SAW_POD_FILE"),
            maps.contains("libremora_layer"),
            body.lines().next().unwrap_or_default()
        );
    }
}
