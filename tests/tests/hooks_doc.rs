//! docs/hooks.md lists every hooked entry point (issue 15, item 3): each
//! function the built layer exports (`nm -D`) must be named there in
//! backquotes. Needs no privileges.

use std::process::Command;

#[test]
fn every_symbol_the_layer_exports_is_listed_in_docs_hooks_md() {
    let layer = remora_tests::artifact_path("libremora_layer.so")
        .expect("build the layer first: cargo build -p remora-layer");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&layer)
        .output()
        .expect("nm (binutils) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/hooks.md")).unwrap();
    let exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "T").then(|| name.split('@').next().unwrap_or(name).to_owned())
        })
        .collect();
    assert!(
        exported.iter().any(|s| s == "open"),
        "no hooks found in {}",
        layer.display()
    );
    let missing: Vec<&String> = exported
        .iter()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "exported by the layer but not listed in docs/hooks.md: {missing:?}"
    );
}
