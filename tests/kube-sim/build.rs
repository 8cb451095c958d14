//! Compiles the vendored Kubernetes protobuf schemas (`proto/`) into a descriptor set, with
//! protox (a protobuf compiler in Rust: no protoc needed), for decoding protobuf request
//! bodies (see `src/protobuf.rs`).

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from("proto");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    let set = protox::compile(&files, [&root]).expect("compiling the vendored .proto files");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("k8s.bin");
    std::fs::write(out, prost::Message::encode_to_vec(&set)).expect("writing the descriptor set");
}

fn collect(dir: &std::path::Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("proto dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path.strip_prefix("proto").expect("under proto").to_owned());
        }
    }
}
