//! `edgefleet keys`: generate key pairs and show key ids.

use std::path::PathBuf;

use model_registry::KeyPair;

use crate::args::KeysCmd;
use crate::docs;
use crate::output::Out;

pub fn run(cmd: KeysCmd, out: &Out) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Generate { out: private, public } => {
            let public = public.unwrap_or_else(|| private.with_extension("pub"));
            if public.exists() {
                anyhow::bail!("{}: already exists; refusing to overwrite", public.display());
            }
            let pair = KeyPair::generate()?;
            pair.write_private(&private)?;
            if let Err(e) = docs::write_new(&public, pair.public()) {
                // Leave no half-made pair behind.
                let _ = std::fs::remove_file(&private);
                return Err(e);
            }
            out.emit(
                format!(
                    "key {}\n  private {} (mode 0600; keep it offline)\n  public  {}",
                    pair.key_id(),
                    private.display(),
                    public.display()
                ),
                serde_json::json!({"keyid": pair.key_id(), "private": private, "public": public}),
            );
        }
        KeysCmd::Show { file } => {
            let key = docs::read_any_public(&file)?;
            let id = key.key_id();
            out.emit(
                format!("key {id}\n  ed25519 public {}", key.keyval.public),
                serde_json::json!({"keyid": id, "public": key.keyval.public, "file": PathBuf::from(&file)}),
            );
        }
    }
    Ok(())
}
