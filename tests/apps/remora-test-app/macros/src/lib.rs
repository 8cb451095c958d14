//! `compiler_report!()` runs inside rustc while it compiles the test app and
//! expands to `(rustc_had_the_layer, rustc_saw_the_pod_file)`.

use proc_macro::TokenStream;

#[proc_macro]
pub fn compiler_report(_: TokenStream) -> TokenStream {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
    let layer = maps.contains("libremora_layer") || preload.contains("libremora_layer");
    let pod_file = std::env::var("POD_FILE")
        .map(|p| std::path::Path::new(&p).exists())
        .unwrap_or(false);
    format!("({layer}, {pod_file})").parse().unwrap()
}
