//! Writes the CRD YAML of our kinds into a directory (default: `crds/` of the
//! workspace). `crds/tests/generated.rs` fails when the committed files drift.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for (file, crd) in openvox_crds::crd::all() {
        let path = dir.join(file);
        std::fs::write(&path, openvox_crds::crd::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
