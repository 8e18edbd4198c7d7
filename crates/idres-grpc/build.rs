//! Compiles `proto/idres/v1/*.proto` with the protoc shipped by
//! `protoc-bin-vendored`, so that no system protoc is needed, and writes a
//! file descriptor set for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files =
        ["common", "node", "registry", "sync"].map(|f| root.join(format!("idres/v1/{f}.proto")));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out.join("idres_v1_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
