//! The trust root over time: walked forward one version at a time through the server's roots, each checked
//! against the one before and stored before the next is taken. At start, and whenever the server says it is on
//! a newer root — also when it answered with a document this device refused for want of that root.

use model_registry::fsutil::write_file_atomic;
use model_registry::verify::update_root;
use model_registry::{Limits, Root};

/// Walks from `root` towards version `latest`, one version at a time, each checked against the one before
/// (`update_root`: a threshold of the old root keys and of the new ones) and stored before the next is taken.
/// A refused or unreachable version stops the walk where it is: the device keeps the last root it could check.
pub async fn walk_roots(
    mut root: Root,
    latest: u64,
    server: &str,
    client: &reqwest::Client,
    stored: &std::path::Path,
    limits: &Limits,
) -> anyhow::Result<Root> {
    while root.version < latest {
        let next = client.get(format!("{server}/api/v1/trust/roots/{}", root.version + 1)).send().await;
        let next = match next.and_then(|r| r.error_for_status()) {
            Ok(r) => crate::capped::body(r, limits.max_root_bytes, "a trust root").await?,
            Err(e) => {
                tracing::warn!(error = %e, "fetching root {} failed; staying on version {}", root.version + 1, root.version);
                break;
            }
        };
        match update_root(&root, &next, limits) {
            Ok(r) => {
                if let Some(dir) = stored.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_file_atomic(stored, &next)?;
                tracing::info!(version = r.version, "trust root updated");
                root = r;
            }
            Err(refusal) => {
                tracing::warn!(%refusal, "a newer root was refused; staying on version {}", root.version);
                break;
            }
        }
    }
    Ok(root)
}
