//! Writes the CRD YAML of our kinds into `crds/` and into the Helm chart's
//! `files/crds/` (or into one directory given as the only argument), and the API
//! reference into `docs/api.md`.
//! `crds/tests/generated.rs` fails when the committed files drift.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            crate_dir.clone(),
            openvox_crds::crd::chart_crd_dir(&crate_dir),
        ],
    };
    for dir in dirs {
        for (file, crd) in openvox_crds::crd::all() {
            let path = dir.join(file);
            std::fs::write(&path, openvox_crds::crd::to_yaml(&crd)?)?;
            println!("wrote {}", path.display());
        }
    }
    if std::env::args_os().nth(1).is_none() {
        let path = openvox_crds::crd::reference_path(&crate_dir);
        std::fs::write(&path, openvox_crds::crd::reference())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
