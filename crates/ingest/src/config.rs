//! `neoflix-ingest.toml`. Relative paths are taken from the config file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The server's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// TLS material.
    pub tls: Tls,
    /// Where recordings are kept.
    pub storage: StorageConfig,
    /// What one device, one connection and all requests together may hold.
    #[serde(default)]
    pub limits: Limits,
}

/// `[limits]`: the bounds that keep one device (or one stolen certificate) from starving the
/// others and keep the server's memory bounded whatever the clients send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections served at once, all devices together. Only a connection that completed
    /// its handshake, named its device and is within that device's limit takes one; when all
    /// are taken it is answered 503 with `Retry-After`.
    pub max_connections: usize,
    /// Connections in their TLS handshake at once (or being refused after it). Kept apart
    /// from `max_connections` so that hosts without a certificate, or a device reconnecting
    /// over its limit, never hold the slots of devices being served; further connections wait
    /// in the kernel's accept queue.
    pub max_handshakes: usize,
    /// Seconds a TLS handshake may take before the connection is closed: a handshake is a few
    /// round trips, so anything much slower is a host holding a handshake slot.
    pub handshake_timeout_secs: u64,
    /// Connections one device (one certificate common name) may hold at once; the box uploads
    /// 8 objects at a time, the rest is headroom for connections a restarted box left behind.
    /// Further connections get 503 and are closed, so a misbehaving device cannot hold the
    /// slots every other device needs.
    pub max_connections_per_device: usize,
    /// Slowest accepted request body, averaged from its start: a body that falls behind
    /// (after the grace below) is cut with 408, so trickling bytes cannot hold a slot.
    pub min_bytes_per_sec: u64,
    /// Seconds a request body may take before the minimum rate applies (TLS warm-up, a
    /// congested moment on the ward's network).
    pub rate_grace_secs: u64,
    /// Bytes of request bodies held in memory by all requests together (object write
    /// batches, manifests and their parsed form); a request that would exceed it gets 503 with
    /// `Retry-After`.
    pub max_buffered_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 2048,
            max_handshakes: 256,
            handshake_timeout_secs: 5,
            max_connections_per_device: 16,
            min_bytes_per_sec: 4096,
            rate_grace_secs: 10,
            max_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The smallest `limits.max_buffered_bytes`: room for the largest manifest and its parsed form.
pub const MIN_BUFFERED_BYTES: u64 = 2 * crate::http::MAX_MANIFEST;

impl Limits {
    /// Every limit that cannot work, each naming the option and its value.
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.max_connections == 0 || self.max_connections > 1 << 20 {
            v.push(format!(
                "limits.max_connections = {}: must be between 1 and 1048576",
                self.max_connections
            ));
        }
        if self.max_handshakes == 0 || self.max_handshakes > 1 << 16 {
            v.push(format!(
                "limits.max_handshakes = {}: must be between 1 and 65536",
                self.max_handshakes
            ));
        }
        if self.handshake_timeout_secs == 0 || self.handshake_timeout_secs > 60 {
            v.push(format!(
                "limits.handshake_timeout_secs = {}: must be between 1 and 60",
                self.handshake_timeout_secs
            ));
        }
        if self.max_connections_per_device == 0
            || self.max_connections_per_device > self.max_connections
        {
            v.push(format!(
                "limits.max_connections_per_device = {}: must be between 1 and limits.max_connections ({})",
                self.max_connections_per_device, self.max_connections
            ));
        }
        if self.min_bytes_per_sec == 0 {
            v.push("limits.min_bytes_per_sec = 0: must be at least 1 (a body that never sends would hold its slot)".into());
        }
        if self.rate_grace_secs > 3600 {
            v.push(format!(
                "limits.rate_grace_secs = {}: at most 3600",
                self.rate_grace_secs
            ));
        }
        // The semaphore that enforces it counts in usize and caps at usize::MAX >> 3.
        let max_budget = (usize::MAX >> 3) as u64;
        if self.max_buffered_bytes < MIN_BUFFERED_BYTES || self.max_buffered_bytes > max_budget {
            v.push(format!(
                "limits.max_buffered_bytes = {}: must be at least {MIN_BUFFERED_BYTES} (the largest manifest and its parsed form)",
                self.max_buffered_bytes
            ));
        }
        v
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// CA certificate(s) whose devices may upload (PEM, one or more in the file).
    pub client_ca: PathBuf,
    /// Certificate revocation list(s) of those CAs (PEM), optional.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Root of the tree `<dir>/<device>/<recording>/`.
    pub dir: PathBuf,
    /// Largest accepted object body.
    #[serde(default = "default_max_object")]
    pub max_object_bytes: u64,
}

fn default_max_object() -> u64 {
    64 * 1024 * 1024
}

impl IngestConfig {
    /// Reads a config file; errors name the file and, for syntax and type errors, the line.
    pub fn load(path: &Path) -> anyhow::Result<IngestConfig> {
        // Bounded: a config is a few KiB, and a wrong path (/dev/zero, a FIFO) must not hang
        // or exhaust the server.
        let text = neoflix_logging::read_small_file(path, 1 << 20)?;
        let mut cfg: IngestConfig = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .unwrap_or(1);
            anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.tls.client_ca,
            &mut cfg.storage.dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(crl) = cfg.tls.crl.as_mut()
            && crl.is_relative()
        {
            *crl = base.join(&*crl);
        }
        let problems = cfg.limits.problems();
        if !problems.is_empty() {
            anyhow::bail!("{}: {}", path.display(), problems.join("; "));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_bad_limit_is_named() {
        assert!(Limits::default().problems().is_empty());
        let bad = Limits {
            max_connections: 4,
            max_handshakes: 0,
            handshake_timeout_secs: 61,
            max_connections_per_device: 5,
            min_bytes_per_sec: 0,
            rate_grace_secs: 7200,
            max_buffered_bytes: 1024,
        };
        let p = bad.problems().join("\n");
        for option in [
            "max_handshakes = 0",
            "handshake_timeout_secs = 61",
            "max_connections_per_device = 5",
            "min_bytes_per_sec = 0",
            "rate_grace_secs = 7200",
            "max_buffered_bytes = 1024",
        ] {
            assert!(p.contains(option), "{option} not named in:\n{p}");
        }
    }
}
