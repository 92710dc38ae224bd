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
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
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
        Ok(cfg)
    }
}
