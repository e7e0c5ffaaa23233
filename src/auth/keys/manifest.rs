//! `keys/manifest.json`: every key of a rotating key directory, with its times. File names are
//! relative to the directory (absolute paths are kept as they are).

use std::{fs, path::Path};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{KeyError, KeyKind, KeyPaths, SigningKey, generate::write_file, read_key_file};

/// The manifest's file name inside the key directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Every key of a rotating key directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub keys: Vec<ManifestEntry>,
}

/// One key pair in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub kind: KeyKind,
    pub kid: String,
    pub private_key: String,
    pub public_key: String,
    pub created_at: DateTime<Utc>,
    pub signs_from: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<DateTime<Utc>>,
}

/// Where a key is in its life, at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published (access keys) but not signing yet.
    Pending,
    /// Signs new tokens of its kind.
    Signing,
    /// Replaced; still verifies the tokens it signed until `retires_at`.
    Retiring,
    /// Every token it signed has expired: `keys prune` removes it.
    Expired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Signing => "signing",
            KeyState::Retiring => "retiring",
            KeyState::Expired => "expired",
        }
    }
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|err| KeyError::BadManifest {
            path,
            reason: err.to_string(),
        })
    }

    /// The manifest of `paths.dir`, or, for a single-key directory without one, a manifest
    /// describing its four files (each pair signing from the beginning).
    pub fn read_or_describe(paths: &KeyPaths) -> Result<Self, KeyError> {
        if paths.dir.join(MANIFEST_FILE).exists() {
            return Self::read(&paths.dir);
        }
        let mut keys = Vec::with_capacity(2);
        for kind in KeyKind::ALL {
            let (private, public) = paths.pair(kind);
            let key = SigningKey::from_pem(
                kind,
                &read_key_file(private)?,
                Some(&read_key_file(public)?),
            )?;
            // A single key signs from the beginning; when it was made is when its file was
            // last written.
            let created_at = fs::metadata(private)
                .and_then(|meta| meta.modified())
                .map(DateTime::<Utc>::from)
                .unwrap_or(DateTime::UNIX_EPOCH);
            keys.push(ManifestEntry {
                kind,
                kid: key.kid,
                private_key: relative_name(&paths.dir, private)?,
                public_key: relative_name(&paths.dir, public)?,
                created_at,
                signs_from: DateTime::UNIX_EPOCH,
                retires_at: None,
            });
        }
        Ok(Self { keys })
    }

    /// Writes `dir/manifest.json` atomically (a temporary file renamed over it), so a running
    /// instance reloading at the same moment reads either the old or the new manifest.
    pub fn write(&self, dir: &Path) -> Result<(), KeyError> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|err| KeyError::BadManifest {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        let temp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        write_file(&temp, &format!("{text}\n"), 0o644)?;
        fs::rename(&temp, &path).map_err(|source| KeyError::Io { path, source })
    }

    /// The state of entry `index` at `now`.
    pub fn state(&self, index: usize, now: DateTime<Utc>) -> KeyState {
        let entry = &self.keys[index];
        if entry.signs_from > now {
            return KeyState::Pending;
        }
        // The signing key of a kind: the latest `signs_from` not after now.
        let signing = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.kind == entry.kind && k.signs_from <= now)
            .max_by_key(|(i, k)| (k.signs_from, *i))
            .map(|(i, _)| i);
        if signing == Some(index) {
            KeyState::Signing
        } else if entry.retires_at.is_some_and(|t| t <= now) {
            KeyState::Expired
        } else {
            KeyState::Retiring
        }
    }
}

fn relative_name(dir: &Path, path: &Path) -> Result<String, KeyError> {
    let name = match path.strip_prefix(dir) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => std::path::absolute(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?,
    };
    name.to_str()
        .map(str::to_owned)
        .ok_or_else(|| KeyError::NotUtf8 {
            path: path.to_path_buf(),
        })
}
