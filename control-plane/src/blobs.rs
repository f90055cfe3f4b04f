//! Where the control plane keeps blobs: a local directory (the embedded default) or an S3-compatible bucket
//! through `object_store`. The bucket is untrusted like any mirror: an upload is checked against its digest
//! before it becomes visible there, and devices check every byte they download against the signed digests, so a
//! bucket that returns wrong or short bytes costs a retry, never a wrong model.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use edgefleet_protocol::Sha256Digest;
use futures_util::TryStreamExt;
use model_registry::artifact::{ArtifactError, ArtifactRef};
use model_registry::blob::{BlobRead, BlobReader};
use model_registry::{BlobError, BlobStore, ByteRange, FsBlobStore, PutCheck};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::config::Config;

/// Parts of a multipart upload, and how many may be in flight at once.
const PART_BYTES: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// Blobs in an object store under `<prefix>/sha256/<first two hex>/<hex>`.
#[derive(Debug)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    /// Presigns download URLs (S3), when downloads are redirected.
    signer: Option<Arc<dyn Signer>>,
}

fn remote(e: object_store::Error) -> BlobError {
    BlobError::Remote(e.to_string())
}

impl ObjectBlobStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, signer: Option<Arc<dyn Signer>>) -> Self {
        Self { store, prefix: Key::from(prefix.trim_matches('/')), signer }
    }

    fn under(&self, parts: &[&str]) -> Key {
        let mut key = self.prefix.clone();
        for p in parts {
            key = key.clone().join(*p);
        }
        key
    }

    fn key(&self, d: &Sha256Digest) -> Key {
        let hex = d.to_hex();
        self.under(&["sha256", &hex[..2], &hex])
    }

    /// Streams `src` into a multipart upload of `key`, checking every chunk before it is sent; the upload is
    /// completed (the object made visible) only once the whole stream passed, and aborted otherwise.
    async fn upload(&self, mut src: BlobReader, key: &Key, mut check: PutCheck) -> Result<ArtifactRef, BlobError> {
        let upload = self.store.put_multipart(key).await.map_err(remote)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let streamed = async {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n =
                    src.read(&mut buf).await.map_err(|source| ArtifactError::Read { what: "blob upload", source })?;
                if n == 0 {
                    break;
                }
                check.update(&buf[..n])?;
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(remote)?;
                writer.write(&buf[..n]);
            }
            Ok::<_, BlobError>(())
        }
        .await;
        let checked = streamed.and_then(|()| check.finish().map_err(BlobError::from));
        match checked {
            Ok(stored) => {
                writer.finish().await.map_err(remote)?;
                Ok(stored)
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, key = %key, "aborting a refused multipart upload failed");
                }
                Err(e)
            }
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, src: BlobReader, expected: Option<ArtifactRef>, limit: u64) -> Result<ArtifactRef, BlobError> {
        let check = PutCheck::new(expected, limit);
        if let Some(e) = expected {
            return self.upload(src, &self.key(&e.sha256), check).await;
        }
        // Unsigned: the name is known only at the end, so the bytes go to a temporary key and are copied.
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).map_err(|e| BlobError::Remote(format!("random name: {e}")))?;
        let tmp = self.under(&["tmp", &hex::encode(name)]);
        let stored = self.upload(src, &tmp, check).await?;
        let copied = self.store.copy(&tmp, &self.key(&stored.sha256)).await.map_err(remote);
        if let Err(e) = self.store.delete(&tmp).await {
            tracing::warn!(error = %e, key = %tmp, "removing a temporary upload failed");
        }
        copied.map(|()| stored)
    }

    async fn get_range(&self, digest: &Sha256Digest, range: Option<ByteRange>) -> Result<BlobRead, BlobError> {
        let range = range.map(|r| match r.end {
            Some(end) => GetRange::Bounded(r.start..end),
            None => GetRange::Offset(r.start),
        });
        let got = self.store.get_opts(&self.key(digest), GetOptions { range, ..Default::default() }).await;
        let got = match got {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(*digest)),
            Err(e) => return Err(remote(e)),
        };
        let (total, start, len) = (got.meta.size, got.range.start, got.range.end - got.range.start);
        let stream = got.into_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream).take(len);
        Ok(BlobRead { total, start, len, reader: Box::pin(reader) })
    }

    async fn has(&self, digest: &Sha256Digest) -> Result<Option<u64>, BlobError> {
        match self.store.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote(e)),
        }
    }

    async fn delete(&self, digest: &Sha256Digest) -> Result<bool, BlobError> {
        if self.has(digest).await?.is_none() {
            return Ok(false);
        }
        self.store.delete(&self.key(digest)).await.map_err(remote)?;
        Ok(true)
    }

    async fn presign(&self, digest: &Sha256Digest, ttl: Duration) -> Result<Option<String>, BlobError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let url = signer.signed_url(object_store::signer::Method::GET, &self.key(digest), ttl).await.map_err(remote)?;
        Ok(Some(url.to_string()))
    }

    async fn health(&self) -> Result<(), BlobError> {
        // A listing, not a HEAD: a missing bucket must count as unhealthy, not as a missing object.
        self.store.list_with_delimiter(Some(&self.under(&["sha256"]))).await.map(drop).map_err(remote)
    }
}

/// How devices get blob bytes when the store can presign URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Downloads {
    /// Through the server (the default): it streams the bytes from the store.
    #[default]
    Proxy,
    /// A `307` to a presigned URL of the object store, valid for `blob_redirect_secs`.
    Redirect,
}

/// Opens the configured blob store: `s3://bucket[/prefix]` (credentials, region and endpoint from the usual
/// `AWS_*` variables unless the config names them), a directory path, or by default `<data>/blobs`.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let Some(url) = config.blobs.as_deref() else {
        return Ok(Arc::new(FsBlobStore::open(config.data_dir.join("blobs")).await.context("opening the blob store")?));
    };
    let Some(rest) = url.strip_prefix("s3://") else {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        return Ok(Arc::new(FsBlobStore::open(dir).await.with_context(|| format!("opening the blob store {dir}"))?));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(!bucket.is_empty(), "blob store {url:?}: no bucket named");
    // No total timeout (a proxied download of a large model streams as slowly as the device reads); a stalled
    // store is noticed by the read timeout. Few, quick retries: a store that is down makes requests fail within
    // seconds (and `/readyz` say so), not hang for the default three minutes.
    let client = object_store::ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(60));
    let retry = object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
        backoff: Default::default(),
    };
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_client_options(client)
        .with_retry(retry);
    if let Some(endpoint) = &config.blob_endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.blob_region {
        builder = builder.with_region(region);
    }
    if config.blob_allow_http {
        builder = builder.with_allow_http(true);
    }
    let s3 = Arc::new(builder.build().with_context(|| format!("blob store {url}"))?);
    let store = ObjectBlobStore::new(s3.clone(), prefix, Some(s3));
    // Not fatal: a store that is down at start makes the server unready (`/readyz`), not absent.
    if let Err(e) = store.health().await {
        tracing::warn!(error = %e, store = url, "the blob store does not answer yet");
    }
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn reader(bytes: Vec<u8>) -> BlobReader {
        Box::pin(std::io::Cursor::new(bytes))
    }

    #[tokio::test]
    async fn puts_are_checked_before_they_are_visible_and_reads_honour_ranges() {
        let mem = Arc::new(InMemory::new());
        let store = ObjectBlobStore::new(mem.clone(), "fleet/blobs", None);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let good = ArtifactRef { sha256: Sha256Digest::of(&data), size: data.len() as u64 };

        // Wrong bytes under a signed reference: refused, and nothing is left under the digest's key.
        let mut wrong = data.clone();
        wrong[1000] ^= 1;
        let err = store.put(reader(wrong), Some(good), good.size).await.expect_err("wrong bytes");
        assert!(err.to_string().contains("sha256"), "{err}");
        assert_eq!(store.has(&good.sha256).await.expect("has"), None);
        // Short bytes likewise.
        let err = store.put(reader(data[..1000].to_vec()), Some(good), good.size).await.expect_err("short");
        assert!(err.to_string().contains("ended after 1000"), "{err}");
        assert_eq!(store.has(&good.sha256).await.expect("has"), None);

        assert_eq!(store.put(reader(data.clone()), Some(good), good.size).await.expect("put"), good);
        assert_eq!(store.has(&good.sha256).await.expect("has"), Some(good.size));
        let key = format!("fleet/blobs/sha256/{}/{}", &good.sha256.to_hex()[..2], good.sha256.to_hex());
        assert!(mem.head(&Key::from(key.as_str())).await.is_ok(), "stored under {key}");

        let mut read = store.get_range(&good.sha256, Some(ByteRange { start: 10, end: Some(20) })).await.expect("get");
        assert_eq!((read.total, read.start, read.len), (good.size, 10, 10));
        let mut got = Vec::new();
        read.reader.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, &data[10..20]);
        let mut read =
            store.get_range(&good.sha256, Some(ByteRange { start: 299_990, end: None })).await.expect("tail");
        got.clear();
        read.reader.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, &data[299_990..]);

        // Unsigned puts are measured, capped, and land under their digest with no temporary left behind.
        let other = b"an unsigned blob".to_vec();
        let measured = store.put(reader(other.clone()), None, 1 << 20).await.expect("unsigned");
        assert_eq!(measured.sha256, Sha256Digest::of(&other));
        assert!(store.put(reader(other), None, 4).await.is_err(), "over the cap");
        let tmp: Vec<_> = mem.list(Some(&Key::from("fleet/blobs/tmp"))).try_collect().await.expect("list");
        assert!(tmp.is_empty(), "temporary uploads left: {tmp:?}");

        assert!(store.delete(&good.sha256).await.expect("delete"));
        assert!(!store.delete(&good.sha256).await.expect("delete again"));
        assert!(matches!(store.get_range(&good.sha256, None).await, Err(BlobError::NotFound(_))));
        store.health().await.expect("healthy");
    }
}
