//! Embeds the built web dashboard (`dashboards/web/dist`, made by `npm run build` from `scripts/setup.sh`) into
//! the server binary, so it serves the dashboard offline with no files beside it. Without a build the list is
//! empty and `/` says how to build it.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = manifest.join("../dashboards/web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    // sqlx::migrate! embeds the migrations at compile time: a new one must rebuild the crate.
    println!("cargo:rerun-if-changed={}", manifest.join("../migrations").display());
    let mut found = Vec::new();
    files(&dist, &mut found);
    found.sort();
    let mut code = String::from(
        "/// The dashboard's built files: (path under `/`, bytes).\npub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for f in &found {
        let rel = f.strip_prefix(&dist).expect("under dist").to_string_lossy().replace('\\', "/");
        let abs = f.canonicalize().expect("a built file");
        code.push_str(&format!("    ({:?}, include_bytes!({:?})),\n", format!("/{rel}"), abs.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dashboard_assets.rs");
    std::fs::write(out, code).expect("write dashboard_assets.rs");
}
