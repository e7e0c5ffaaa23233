//! RSA key material: where it comes from ([`KeySource`]), loaded and checked at startup (and
//! again on every reload of the key directory), and parsed once per load (never per request).
//!
//! Access and refresh tokens are signed by two different sets of key pairs, so a token of one
//! kind can never verify as the other. The `kid` of a key is its RFC 7638 JWK thumbprint.
//!
//! # Several keys per kind: staged rotation
//!
//! A key directory holds either the four files of a single-key setup (`access_private.pem`,
//! `access_public.pem`, `refresh_private.pem`, `refresh_public.pem`: each pair signs from the
//! beginning) or a `manifest.json` listing every key with its times:
//!
//! - `signs_from`: the key signs tokens issued at or after this time. `keys rotate` sets it to
//!   now + a delay longer than the JWKS `max-age`, so every verifier has fetched the new public
//!   key before the first token signed with it exists.
//! - `retires_at`: set once a newer key takes over at time T, to T + the longest lifetime of a
//!   token of that kind + the verification leeway. Until then the key keeps verifying (and, for
//!   access keys, stays in the JWKS); after it, `keys prune` deletes it.
//!
//! The signing key is the newest key whose `signs_from` is not after the token's `iat`.
//!
//! The files: [`material`] parses one pair, [`manifest`] reads and writes the manifest,
//! [`rotation`] adds and prunes keys, [`generate`] makes new pairs.

pub mod generate;
pub mod manifest;
pub mod material;
pub mod rotation;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use self::{
    generate::{DEFAULT_BITS, GeneratedPair, generate_key_dir, generate_pair},
    manifest::{KeyState, MANIFEST_FILE, Manifest, ManifestEntry},
    material::{MIN_BITS, PublicJwk, SigningKey, thumbprint},
    rotation::{RotationPolicy, prune, rotate},
};

/// Which of the two kinds of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Access,
    Refresh,
}

impl KeyKind {
    pub const ALL: [KeyKind; 2] = [KeyKind::Access, KeyKind::Refresh];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Access => "access",
            KeyKind::Refresh => "refresh",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the RSA key material comes from.
#[derive(Clone)]
pub enum KeySource {
    /// PEM files on disk (`KEYS_DIR` or the individual `*_PATH` variables).
    Files(KeyPaths),
    /// PEM text given directly (decoded from base64 environment variables, or built by tests).
    Inline(InlineKeys),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Files(paths) => f.debug_tuple("Files").field(paths).finish(),
            KeySource::Inline(_) => f.write_str("Inline([REDACTED])"),
        }
    }
}

/// The key directory and the paths of the four PEM files of a single-key setup. When the
/// directory holds a `manifest.json` (written by `latchkey keys rotate`), the manifest lists the
/// keys instead and the four paths are not read.
#[derive(Debug, Clone)]
pub struct KeyPaths {
    /// `KEYS_DIR`: where the manifest and rotated keys live.
    pub dir: PathBuf,
    pub access_private: PathBuf,
    pub access_public: PathBuf,
    pub refresh_private: PathBuf,
    pub refresh_public: PathBuf,
}

impl KeyPaths {
    /// The default file names inside a key directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            access_private: dir.join("access_private.pem"),
            access_public: dir.join("access_public.pem"),
            refresh_private: dir.join("refresh_private.pem"),
            refresh_public: dir.join("refresh_public.pem"),
            dir,
        }
    }

    pub fn all(&self) -> [&PathBuf; 4] {
        [
            &self.access_private,
            &self.access_public,
            &self.refresh_private,
            &self.refresh_public,
        ]
    }

    /// The private and public file of `kind`.
    pub fn pair(&self, kind: KeyKind) -> (&Path, &Path) {
        match kind {
            KeyKind::Access => (&self.access_private, &self.access_public),
            KeyKind::Refresh => (&self.refresh_private, &self.refresh_public),
        }
    }
}

/// PEM text of the four keys. The private halves are secrets.
#[derive(Clone)]
pub struct InlineKeys {
    pub access_private: SecretString,
    pub access_public: String,
    pub refresh_private: SecretString,
    pub refresh_public: String,
}

/// How strictly keys are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRules {
    /// Development: a key directory with no keys at all gets fresh ones.
    pub generate_missing: bool,
    /// Production: a private key file that its group or others may read is refused.
    pub owner_only: bool,
}

impl LoadRules {
    /// The same rules, never generating (a reload only reads what is there).
    pub fn reading_only(self) -> Self {
        Self {
            generate_missing: false,
            ..self
        }
    }
}

/// What is wrong with the keys, with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "key file {} is missing: create keys with `latchkey keys generate --dir {}`, or point \
         the *_PATH variables at existing PEM files", path.display(), dir.display()
    )]
    Missing { path: PathBuf, dir: PathBuf },
    #[error("key file {} is unreadable ({source}): check its path and permissions", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the {kind} private key is not a valid RSA private key in PEM form ({reason}); create \
         keys with `latchkey keys generate`"
    )]
    BadPrivate { kind: KeyKind, reason: String },
    #[error("the {kind} public key is not a valid RSA public key in PEM form ({reason})")]
    BadPublic { kind: KeyKind, reason: String },
    #[error(
        "the {kind} key has {bits} bits; Latchkey needs at least {MIN_BITS}: generate new keys \
         with `latchkey keys generate --bits 3072` (or `latchkey keys rotate --bits 3072`)"
    )]
    TooShort { kind: KeyKind, bits: usize },
    #[error(
        "the {kind} public key does not match the {kind} private key: regenerate the pair with \
         `latchkey keys generate --force`, or fix the paths"
    )]
    Mismatch { kind: KeyKind },
    #[error("the {kind} key could not be prepared for signing: {reason}")]
    Unusable { kind: KeyKind, reason: String },
    #[error(
        "the access and refresh key pairs are the same key: generate two distinct pairs with \
         `latchkey keys generate --force`"
    )]
    SamePair,
    #[error(
        "no {kind} key signs yet: every key in the manifest has `signs_from` in the future; keep \
         the previous key until the new one takes over"
    )]
    NoneSigning { kind: KeyKind },
    #[error("the {kind} key {kid} is listed twice in the manifest")]
    Duplicate { kind: KeyKind, kid: String },
    #[error("{} is not a valid key manifest ({reason}); see keys/README.md", path.display())]
    BadManifest { path: PathBuf, reason: String },
    #[error(
        "{}: the {kind} key {file} has kid {found}, not the {listed} the manifest says: the files \
         were replaced; restore them or fix the manifest", manifest.display()
    )]
    Replaced {
        manifest: PathBuf,
        kind: KeyKind,
        file: String,
        found: String,
        listed: String,
    },
    #[error("{}: {source}", path.display())]
    In {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} exists; pass --force to replace it (tokens signed by the old key stop verifying)",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error(
        "{} has a key manifest: use `latchkey keys rotate --dir {}` to add keys",
        dir.display(), dir.display()
    )]
    HasManifest { dir: PathBuf },
    #[error("the key {kid} is already in the manifest")]
    AlreadyListed { kid: String },
    #[error("RSA key generation failed: {0}")]
    Generation(String),
    #[error("the delay must not be negative")]
    NegativeDelay,
    #[error("{}: not a UTF-8 path", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(
        "private key file {} has mode {mode:o}: its group or others can read it; run `chmod \
         600 {}` (and make the service's user its owner)", path.display(), path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
}

/// A key of a running service with its place in the rotation.
pub struct ManagedKey {
    pub key: SigningKey,
    pub created_at: DateTime<Utc>,
    pub signs_from: DateTime<Utc>,
    pub retires_at: Option<DateTime<Utc>>,
}

impl ManagedKey {
    /// A key of a single-key setup: it signs from the beginning and never retires.
    fn from_start(key: SigningKey) -> Self {
        Self {
            key,
            created_at: DateTime::UNIX_EPOCH,
            signs_from: DateTime::UNIX_EPOCH,
            retires_at: None,
        }
    }
}

/// Every key of a running service, both kinds, each list ordered by `signs_from`.
pub struct Keys {
    access: Vec<ManagedKey>,
    refresh: Vec<ManagedKey>,
    /// Whether this load generated development keys (the startup banner says so).
    generated: bool,
}

impl Keys {
    /// Loads, parses and checks the configured keys. In development, a key directory with no
    /// manifest and none of the four files gets fresh keys first (loudly). Every problem is a
    /// startup refusal (production never passes `generate_missing`).
    pub fn load(source: &KeySource, rules: LoadRules) -> Result<Self, KeyError> {
        let mut generated = false;
        let entries = match source {
            KeySource::Files(paths) if paths.dir.join(MANIFEST_FILE).exists() => {
                load_manifest(&paths.dir, rules)?
            }
            KeySource::Files(paths) => {
                generated = generate_if_none(paths, rules)?;
                load_single_key_dir(paths, rules)?
            }
            KeySource::Inline(inline) => vec![
                from_start(
                    KeyKind::Access,
                    inline.access_private.expose_secret(),
                    &inline.access_public,
                )?,
                from_start(
                    KeyKind::Refresh,
                    inline.refresh_private.expose_secret(),
                    &inline.refresh_public,
                )?,
            ],
        };
        let mut keys = Keys {
            access: Vec::new(),
            refresh: Vec::new(),
            generated,
        };
        for (kind, key) in entries {
            keys.list_mut(kind).push(key);
        }
        keys.access.sort_by_key(|k| k.signs_from);
        keys.refresh.sort_by_key(|k| k.signs_from);
        keys.check()?;
        Ok(keys)
    }

    /// Whether loading generated fresh development keys.
    pub fn generated(&self) -> bool {
        self.generated
    }

    fn list_mut(&mut self, kind: KeyKind) -> &mut Vec<ManagedKey> {
        match kind {
            KeyKind::Access => &mut self.access,
            KeyKind::Refresh => &mut self.refresh,
        }
    }

    /// Every key of `kind`, ordered by `signs_from` (pending keys last).
    pub fn all(&self, kind: KeyKind) -> &[ManagedKey] {
        match kind {
            KeyKind::Access => &self.access,
            KeyKind::Refresh => &self.refresh,
        }
    }

    /// The key that signs a token issued at `iat` (Unix seconds): the newest whose `signs_from`
    /// is not after it. Choosing by the token's own `iat` (not the clock at signing time) keeps
    /// signing deterministic: re-signing the same claims inside the refresh grace window gives
    /// the same token even if a rotation switched keys in between.
    pub fn signing_at(&self, kind: KeyKind, iat: i64) -> Option<&SigningKey> {
        self.all(kind)
            .iter()
            .rev()
            .find(|k| k.signs_from.timestamp() <= iat)
            .map(|k| &k.key)
    }

    /// The key that signs tokens issued now.
    pub fn current(&self, kind: KeyKind) -> Option<&SigningKey> {
        self.signing_at(kind, Utc::now().timestamp())
    }

    /// The key of `kind` named `kid`, whatever its state: a token verifies only with the key
    /// its header names, and a `kid` we do not hold never verifies.
    pub fn find(&self, kind: KeyKind, kid: &str) -> Option<&SigningKey> {
        self.all(kind).iter().map(|k| &k.key).find(|k| k.kid == kid)
    }

    /// The `kid`s of every key, both kinds, with their times: what a reload compares.
    fn summary(&self) -> Vec<(String, i64, Option<i64>)> {
        KeyKind::ALL
            .iter()
            .flat_map(|kind| self.all(*kind))
            .map(|k| {
                (
                    k.key.kid.clone(),
                    k.signs_from.timestamp(),
                    k.retires_at.map(|t| t.timestamp()),
                )
            })
            .collect()
    }

    /// Whether `other` holds the same keys with the same times.
    pub fn same_as(&self, other: &Keys) -> bool {
        self.summary() == other.summary()
    }

    fn check(&self) -> Result<(), KeyError> {
        let now = Utc::now().timestamp();
        for kind in KeyKind::ALL {
            if self.signing_at(kind, now).is_none() {
                return Err(KeyError::NoneSigning { kind });
            }
            let keys = self.all(kind);
            for (i, key) in keys.iter().enumerate() {
                if keys[..i].iter().any(|k| k.key.kid == key.key.kid) {
                    let kid = key.key.kid.clone();
                    return Err(KeyError::Duplicate { kind, kid });
                }
            }
        }
        // One pair for both kinds would let a refresh token pass as an access token.
        if self
            .access
            .iter()
            .any(|access| self.find(KeyKind::Refresh, &access.key.kid).is_some())
        {
            return Err(KeyError::SamePair);
        }
        Ok(())
    }
}

/// A pair of a single-key setup, parsed.
fn from_start(
    kind: KeyKind,
    private_pem: &str,
    public_pem: &str,
) -> Result<(KeyKind, ManagedKey), KeyError> {
    let key = SigningKey::from_pem(kind, private_pem, Some(public_pem))?;
    Ok((kind, ManagedKey::from_start(key)))
}

/// Every key a manifest lists, each checked against the `kid` the manifest records.
fn load_manifest(dir: &Path, rules: LoadRules) -> Result<Vec<(KeyKind, ManagedKey)>, KeyError> {
    let manifest = Manifest::read(dir)?;
    let mut keys = Vec::with_capacity(manifest.keys.len());
    for entry in &manifest.keys {
        let private = dir.join(&entry.private_key);
        let key = SigningKey::from_pem(
            entry.kind,
            &read_private_key_file(&private, rules)?,
            Some(&read_key_file(&dir.join(&entry.public_key))?),
        )
        .map_err(|err| KeyError::In {
            path: private.clone(),
            source: Box::new(err),
        })?;
        if key.kid != entry.kid {
            return Err(KeyError::Replaced {
                manifest: dir.join(MANIFEST_FILE),
                kind: entry.kind,
                file: entry.private_key.clone(),
                found: key.kid,
                listed: entry.kid.clone(),
            });
        }
        let managed = ManagedKey {
            key,
            created_at: entry.created_at,
            signs_from: entry.signs_from,
            retires_at: entry.retires_at,
        };
        keys.push((entry.kind, managed));
    }
    Ok(keys)
}

/// The four files of a single-key setup; in development, generated first when none exists.
/// In development, a key directory with none of the four files gets fresh keys; whether it did.
fn generate_if_none(paths: &KeyPaths, rules: LoadRules) -> Result<bool, KeyError> {
    let none = paths.all().into_iter().all(|p| !p.exists());
    if !(none && rules.generate_missing) {
        return Ok(false);
    }
    tracing::warn!(
        dir = %paths.dir.display(),
        "no RSA keys found: generating DEVELOPMENT keys. Never use these in production; \
         run `latchkey keys generate` and set APP_ENV=production there"
    );
    for kind in KeyKind::ALL {
        let (private, public) = paths.pair(kind);
        generate::generate_pair_files(private, public, DEFAULT_BITS, false)?;
    }
    Ok(true)
}

fn load_single_key_dir(
    paths: &KeyPaths,
    rules: LoadRules,
) -> Result<Vec<(KeyKind, ManagedKey)>, KeyError> {
    let missing: Vec<&PathBuf> = paths.all().into_iter().filter(|p| !p.exists()).collect();
    if let Some(path) = missing.first() {
        return Err(KeyError::Missing {
            path: path.to_path_buf(),
            dir: path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .to_path_buf(),
        });
    }
    KeyKind::ALL
        .into_iter()
        .map(|kind| {
            let (private, public) = paths.pair(kind);
            let private = read_private_key_file(private, rules)?;
            from_start(kind, &private, &read_key_file(public)?)
        })
        .collect()
}

/// A private key file; with `owner_only`, refused if its group or others may read it.
pub fn read_private_key_file(path: &Path, rules: LoadRules) -> Result<String, KeyError> {
    let pem = read_key_file(path)?;
    #[cfg(unix)]
    if rules.owner_only {
        use std::os::unix::fs::PermissionsExt;
        let unreadable = |source| KeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(unreadable)?.permissions().mode();
        if mode & 0o077 != 0 {
            let (path, mode) = (path.to_path_buf(), mode & 0o777);
            return Err(KeyError::TooOpen { path, mode });
        }
    }
    Ok(pem)
}

pub(crate) fn read_key_file(path: &Path) -> Result<String, KeyError> {
    fs::read_to_string(path).map_err(|source| KeyError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}
