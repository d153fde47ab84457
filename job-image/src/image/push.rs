//! Publishing to a registry with oci-client: each blob is checked first (`HEAD`) and
//! sent only when the registry lacks it, mounted from another repository of the same
//! registry when it is there, or streamed from its file in 4 MiB chunks (chunked
//! `PATCH`es, falling back to one streamed `PUT` for registries that mishandle chunks),
//! so memory stays bounded whatever the layer size. Transient failures (connection
//! errors, 5xx, 429) are retried with exponential backoff; the whole blob is sent again
//! from the file. Manifests are put by the caller only after every blob is in place.
//!
//! oci-client's `push()` is not used: it holds every layer in memory and checks no blob
//! before uploading it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncReadExt as _;

use super::auth::{AuthError, Credential, DockerConfig, exchange_identity_token};
use super::gzip::sha256_digest;
use super::media_types;
use crate::git::error_chain;

/// Bytes per upload request and per read of a layer file. GHCR refuses chunks over
/// 4 MiB; smaller chunks mean more round trips.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Largest manifest or config read back from a registry.
const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;

/// A registry operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("registry client: {0}")]
    Client(String),
    #[error("{operation}: {message}{}", attempts_note(*attempts))]
    Registry {
        operation: String,
        message: String,
        attempts: u32,
    },
    #[error("{operation}: {message}")]
    Invalid { operation: String, message: String },
    /// The registry has no such manifest (or repository): for the previous image of a
    /// first build this is expected, not a failure.
    #[error("{operation}: not in the registry")]
    NotFound { operation: String },
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per operation, the first included.
    pub attempts: u32,
    /// Wait before the second try; doubled for every further one.
    pub first_delay: Duration,
    /// Longest wait between tries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Wait after failed try number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP instead of HTTPS (loopback or trusted networks only).
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials by host.
    pub docker_config: DockerConfig,
    pub retry: RetryPolicy,
    /// Connect and read timeout of each request.
    pub timeout: Option<Duration>,
}

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The registry had it already.
    Present,
    /// Mounted from another repository of the registry; no bytes sent.
    Mounted,
    /// Sent; this many bytes.
    Uploaded(u64),
}

/// A blob to put into the registry.
#[derive(Debug, Clone)]
pub enum BlobSource {
    File {
        path: PathBuf,
        digest: String,
        size: u64,
    },
    Bytes {
        data: Bytes,
        digest: String,
    },
}

impl BlobSource {
    pub fn digest(&self) -> &str {
        match self {
            BlobSource::File { digest, .. } | BlobSource::Bytes { digest, .. } => digest,
        }
    }

    fn size(&self) -> u64 {
        match self {
            BlobSource::File { size, .. } => *size,
            BlobSource::Bytes { data, .. } => data.len() as u64,
        }
    }
}

/// A repository `host[:port]/path` without tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub host: String,
    pub path: String,
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

impl Repository {
    /// Parses `host[:port]/path`; a tag or digest is refused (tags are given apart).
    pub fn parse(text: &str) -> Result<Self, PushError> {
        let error = |reason: &str| PushError::Reference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        let last = text.rsplit('/').next().unwrap_or_default();
        if last.contains(':') || last.contains('@') {
            return Err(error(
                "give the repository without tag or digest (use --tag for tags)",
            ));
        }
        let reference = Reference::try_from(text).map_err(|e| error(&e.to_string()))?;
        Ok(Self {
            host: reference.registry().to_owned(),
            path: reference.repository().to_owned(),
        })
    }

    fn reference(&self) -> Reference {
        Reference::with_tag(self.host.clone(), self.path.clone(), "latest".to_owned())
    }

    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(self.host.clone(), self.path.clone(), digest.to_owned())
    }

    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), self.path.clone(), tag.to_owned())
    }
}

/// A connection to one repository of a registry.
pub struct Registry {
    repository: Repository,
    chunked: Client,
    monolithic: Client,
    auth: RegistryAuth,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

fn client_config(options: &RegistryOptions, monolithic: bool) -> ClientConfig {
    ClientConfig {
        protocol: if options.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: options
            .ca_pem
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect(),
        use_monolithic_push: monolithic,
        read_timeout: options.timeout,
        connect_timeout: options.timeout,
        user_agent: concat!("openvox-code-worker/", env!("CARGO_PKG_VERSION")),
        platform_resolver: None,
        ..ClientConfig::default()
    }
}

/// The HTTP status an error carries, if any.
fn status_of(error: &OciDistributionError) -> Option<u16> {
    match error {
        OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        _ => None,
    }
}

fn is_transient_status(code: u16) -> bool {
    code >= 500 || code == 429 || code == 408
}

/// True when the registry says the manifest or repository does not exist.
pub fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        _ => status_of(error) == Some(404),
    }
}

/// True for failures that may pass: the connection, the server's load, rate limits.
pub fn is_transient(error: &OciDistributionError) -> bool {
    if let Some(code) = status_of(error) {
        return is_transient_status(code);
    }
    match error {
        // A certificate the client refuses stays refused: no point in waiting.
        OciDistributionError::RequestError(e) => {
            !e.is_builder()
                && !e.is_redirect()
                && !error_chain(e).to_ascii_lowercase().contains("certificate")
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// One line for an oci-client error; 401/403 say what to check.
fn describe(error: &OciDistributionError) -> String {
    match (status_of(error), error) {
        (Some(401), _) => {
            "the registry refused the credentials (401); check the registry config (pushSecretRef)".to_owned()
        }
        (Some(403), _) => {
            "the registry denied access (403); the credentials lack push or pull rights on this repository".to_owned()
        }
        (_, OciDistributionError::ServerError { code, message, .. }) => {
            let message = message.trim().replace('\n', " ");
            let short: String = message.chars().take(300).collect();
            format!("HTTP {code}: {short}")
        }
        (_, other) => error_chain(other),
    }
}

/// Streams `path` in [`CHUNK_BYTES`] pieces.
fn file_chunks(
    path: PathBuf,
) -> impl Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::try_unfold(None::<tokio::fs::File>, move |file| {
        let path = path.clone();
        async move {
            let mut file = match file {
                Some(f) => f,
                None => tokio::fs::File::open(&path).await?,
            };
            let mut buffer = Vec::with_capacity(CHUNK_BYTES);
            (&mut file)
                .take(CHUNK_BYTES as u64)
                .read_to_end(&mut buffer)
                .await?;
            if buffer.is_empty() {
                return Ok(None);
            }
            Ok(Some((Bytes::from(buffer), Some(file))))
        }
    })
}

impl Registry {
    /// A client for `repository` with the credentials `options` has for its host.
    pub async fn connect(
        repository: &Repository,
        options: &RegistryOptions,
    ) -> Result<Self, PushError> {
        crate::git::install_tls_provider();
        let chunked = Client::try_from(client_config(options, false))
            .map_err(|e| PushError::Client(error_chain(&e)))?;
        let monolithic = Client::try_from(client_config(options, true))
            .map_err(|e| PushError::Client(error_chain(&e)))?;
        let scheme = if options.insecure { "http" } else { "https" };
        let registry_host = repository.reference().resolve_registry().to_owned();
        let auth = match options.docker_config.credential_for(&repository.host) {
            None => RegistryAuth::Anonymous,
            Some(Credential::IdentityToken(token)) => {
                let http = token_http_client(options)?;
                let scopes = vec![format!("repository:{}:pull,push", repository.path)];
                let base_url = format!("{scheme}://{registry_host}");
                RegistryAuth::Bearer(
                    exchange_identity_token(token, &http, &base_url, &repository.host, &scopes)
                        .await?,
                )
            }
            Some(other) => other.direct_auth().unwrap_or(RegistryAuth::Anonymous),
        };
        for client in [&chunked, &monolithic] {
            client.store_auth_if_needed(&registry_host, &auth).await;
        }
        Ok(Self {
            repository: repository.clone(),
            chunked,
            monolithic,
            auth,
            retry: options.retry,
        })
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// Runs `op` until it succeeds, fails for good, or the tries are used up.
    async fn retry<T, F, Fut>(&self, operation: &str, mut op: F) -> Result<T, PushError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if attempt < self.retry.attempts && is_transient(&e) => {
                    let delay = self.retry.delay(attempt);
                    tracing::warn!(
                        "{operation}: {} (try {attempt} of {}, again in {:.1}s)",
                        describe(&e),
                        self.retry.attempts,
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) if is_not_found(&e) => {
                    return Err(PushError::NotFound {
                        operation: operation.to_owned(),
                    });
                }
                Err(e) => {
                    return Err(PushError::Registry {
                        operation: operation.to_owned(),
                        message: describe(&e),
                        attempts: attempt,
                    });
                }
            }
        }
    }

    /// Whether the repository has blob `digest`.
    pub async fn blob_exists(&self, digest: &str) -> Result<bool, PushError> {
        let reference = self.repository.reference();
        self.retry(
            &format!("check blob {digest} in {}", self.repository),
            || self.chunked.blob_exists(&reference, digest),
        )
        .await
    }

    /// Downloads blob `digest` of `size` bytes into the file `path`, retrying transient
    /// failures from the start. The caller checks the bytes against the digest.
    pub async fn download_blob(
        &self,
        digest: &str,
        size: u64,
        path: &Path,
    ) -> Result<(), PushError> {
        let reference = self.repository.reference();
        let descriptor = OciDescriptor {
            media_type: media_types::LAYER_GZIP.to_owned(),
            digest: digest.to_owned(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        self.retry(&format!("download blob {digest}"), || async {
            let mut out = tokio::fs::File::create(path).await?;
            self.chunked
                .pull_blob(&reference, &descriptor, &mut out)
                .await?;
            tokio::io::AsyncWriteExt::flush(&mut out).await?;
            Ok(())
        })
        .await
    }

    /// Mounts blob `digest` from `source` (another repository of the same registry);
    /// false when the registry did not mount it (it may not have it there, or not
    /// allow mounts).
    pub async fn mount(&self, source: &Repository, digest: &str) -> bool {
        if source.host != self.repository.host || source.path == self.repository.path {
            return false;
        }
        let target = self.repository.reference();
        let from = source.reference();
        match self.chunked.mount_blob(&target, &from, digest).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("mount {digest} from {source}: {}", describe(&e));
                false
            }
        }
    }

    /// Puts `blob` into the repository unless it is there: HEAD, then a mount from
    /// `mount_from` when given, then an upload.
    pub async fn ensure_blob(
        &self,
        blob: &BlobSource,
        mount_from: Option<&Repository>,
    ) -> Result<BlobOutcome, PushError> {
        let digest = blob.digest();
        if self.blob_exists(digest).await? {
            return Ok(BlobOutcome::Present);
        }
        if let Some(source) = mount_from
            && self.mount(source, digest).await
            && self.blob_exists(digest).await?
        {
            return Ok(BlobOutcome::Mounted);
        }
        self.upload(blob).await?;
        Ok(BlobOutcome::Uploaded(blob.size()))
    }

    /// Sends `blob`, retrying transient failures from the start of the blob.
    pub async fn upload(&self, blob: &BlobSource) -> Result<(), PushError> {
        let reference = self.repository.reference();
        let digest = blob.digest();
        let operation = format!("upload blob {digest} to {}", self.repository);
        let mut monolithic = false;
        let mut attempt = 1;
        loop {
            let result = match blob {
                BlobSource::Bytes { data, .. } => {
                    let client = if monolithic {
                        &self.monolithic
                    } else {
                        &self.chunked
                    };
                    client
                        .push_blob(&reference, data.clone(), digest)
                        .await
                        .map(|_| ())
                }
                BlobSource::File { path, size, .. } => {
                    let client = if monolithic {
                        &self.monolithic
                    } else {
                        &self.chunked
                    };
                    client
                        .push_blob_stream(
                            &reference,
                            file_chunks(path.clone()),
                            digest,
                            Some(*size),
                        )
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(OciDistributionError::SpecViolationError(violation)) if !monolithic => {
                    tracing::warn!(
                        "{operation}: the registry does not follow the chunked upload protocol ({violation}); sending the blob in one request"
                    );
                    monolithic = true;
                }
                Err(e) if attempt < self.retry.attempts && is_transient(&e) => {
                    let delay = self.retry.delay(attempt);
                    tracing::warn!(
                        "{operation}: {} (try {attempt} of {}, again in {:.1}s)",
                        describe(&e),
                        self.retry.attempts,
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(PushError::Registry {
                        operation,
                        message: describe(&e),
                        attempts: attempt,
                    });
                }
            }
        }
    }

    /// Puts a manifest under `reference` (a digest or a tag of this repository).
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), PushError> {
        let content_type = reqwest::header::HeaderValue::from_str(media_type)
            .map_err(|e| PushError::Client(format!("media type {media_type:?}: {e}")))?;
        let body = Bytes::copy_from_slice(bytes);
        self.retry(&format!("put manifest {reference}"), || {
            self.chunked
                .push_manifest_raw(reference, body.clone(), content_type.clone())
        })
        .await
        .map(|_| ())
    }

    /// Reads the manifest `reference` points at and its config. Returns the manifest
    /// bytes, its digest and the config bytes.
    pub async fn fetch_image_documents(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, String, Vec<u8>), PushError> {
        let operation = format!("read manifest {reference}");
        let accepted = [media_types::MANIFEST, media_types::DOCKER_MANIFEST];
        let (manifest, _) = self
            .retry(&operation, || {
                self.chunked
                    .pull_manifest_raw(reference, &self.auth, &accepted)
            })
            .await?;
        let digest = sha256_digest(&manifest);
        if let Some(wanted) = reference.digest()
            && wanted != digest
        {
            return Err(PushError::Invalid {
                operation,
                message: format!("the registry sent a manifest with digest {digest}"),
            });
        }
        let parsed =
            super::manifest::Manifest::parse(&manifest).map_err(|message| PushError::Invalid {
                operation: operation.clone(),
                message,
            })?;
        if parsed.config.size > MAX_DOCUMENT_BYTES {
            return Err(PushError::Invalid {
                operation,
                message: format!("config is {} bytes, more than expected", parsed.config.size),
            });
        }
        let descriptor = OciDescriptor {
            media_type: parsed.config.media_type.clone(),
            digest: parsed.config.digest.clone(),
            size: i64::try_from(parsed.config.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let config = self
            .retry(&format!("read config {}", descriptor.digest), || async {
                let mut out = Vec::new();
                self.chunked
                    .pull_blob(reference, &descriptor, &mut out)
                    .await?;
                Ok(out)
            })
            .await?;
        Ok((manifest.to_vec(), digest, config))
    }
}

/// A plain reqwest client with the same TLS settings, for the token endpoint.
fn token_http_client(options: &RegistryOptions) -> Result<reqwest::Client, PushError> {
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = &options.ca_pem {
        let certificates = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| PushError::Client(format!("registry CA: {}", error_chain(&e))))?;
        builder = builder.tls_certs_merge(certificates);
    }
    if let Some(timeout) = options.timeout {
        builder = builder.connect_timeout(timeout).read_timeout(timeout);
    }
    builder
        .build()
        .map_err(|e| PushError::Client(error_chain(&e)))
}

/// Reads a PEM CA bundle for the registry.
pub fn read_ca(path: &Path) -> Result<Vec<u8>, PushError> {
    let pem = std::fs::read(path)
        .map_err(|e| PushError::Client(format!("registry CA {}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(PushError::Client(format!(
            "registry CA {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_parsed_without_tags() {
        let r = Repository::parse("127.0.0.1:5000/puppet/code").unwrap();
        assert_eq!(
            (r.host.as_str(), r.path.as_str()),
            ("127.0.0.1:5000", "puppet/code")
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/puppet/code");
        let hub = Repository::parse("example/code").unwrap();
        assert_eq!(hub.to_string(), "docker.io/example/code");
        for bad in [
            "reg.example/code:latest",
            "reg.example/code@sha256:00",
            "",
            "UPPER/Case",
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
        let pinned = r.with_digest(&format!("sha256:{}", "a".repeat(64)));
        assert_eq!(
            pinned.to_string(),
            format!("127.0.0.1:5000/puppet/code@sha256:{}", "a".repeat(64))
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let delays: Vec<u64> = (1..=6)
            .map(|a| policy.delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(policy.delay(100), Duration::from_secs(8));
    }

    #[test]
    fn transient_errors_are_told_apart() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(is_transient(&server(503)));
        assert!(is_transient(&server(429)));
        assert!(!is_transient(&server(400)));
        assert!(!is_transient(&server(401)));
        assert!(!is_transient(&OciDistributionError::SpecViolationError(
            "x".into()
        )));
        assert!(describe(&server(401)).contains("credentials"));
    }

    #[tokio::test]
    async fn files_stream_in_bounded_chunks() {
        use futures_util::TryStreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let chunks: Vec<Bytes> = file_chunks(path).try_collect().await.unwrap();
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [CHUNK_BYTES, CHUNK_BYTES, 17]);
        assert_eq!(chunks.concat(), data);
    }
}
