//! TLS set-up: rustls with the ring provider everywhere (no aws-lc in the build).

/// Installs ring as the process-wide rustls provider. Idempotent: a second call (or a
/// provider installed by someone else) is left alone.
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
