//! RSA key material: generated with the `rsa` crate, loaded and checked at startup (and again on
//! every reload of the key directory), and parsed once per load into jsonwebtoken's
//! `EncodingKey`/`DecodingKey` (never per request).
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

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey},
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding},
    traits::PublicKeyParts,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, InlineKeys, KeyPaths, KeySource};

/// Keys shorter than this are refused everywhere (aws-lc cannot sign with them).
pub const MIN_BITS: usize = 2048;
/// Size of generated keys unless asked otherwise.
pub const DEFAULT_BITS: usize = 2048;
/// The manifest's file name inside the key directory.
pub const MANIFEST_FILE: &str = "manifest.json";

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

/// The public half of a key as a JWK (RSA, RS256, signature use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub kid: String,
    /// Base64url (no padding) big-endian modulus.
    pub n: String,
    /// Base64url (no padding) big-endian public exponent.
    pub e: String,
}

/// One key pair, parsed once.
pub struct SigningKey {
    pub kid: String,
    pub bits: usize,
    pub encoding: EncodingKey,
    /// The private key parsed once for signing: jsonwebtoken's `encode` re-parses the DER on
    /// every signature, which makes RS256 signing ~2.7x slower (see bench/README.md).
    pub key_pair: aws_lc_rs::signature::RsaKeyPair,
    /// jsonwebtoken's form of the public key; verifying with it uses the key parsed once by
    /// [`rs256`](super::rs256).
    pub decoding: DecodingKey,
    pub jwk: PublicJwk,
}

impl SigningKey {
    /// Builds the key from its private half, checking that `public_pem` (if given) matches it.
    pub fn from_pem(
        kind: KeyKind,
        private_pem: &str,
        public_pem: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let private = parse_private(private_pem).map_err(|err| {
            ConfigError(format!(
                "the {} private key is not a valid RSA private key in PEM form ({err}); create \
                 keys with `latchkey keys generate`",
                kind.as_str()
            ))
        })?;
        let public = RsaPublicKey::from(&private);
        let bits = public.size() * 8;
        // aws-lc, which signs and verifies, refuses RSA keys under 2048 bits: such a key could
        // not sign a single token, in any environment.
        if bits < MIN_BITS {
            return Err(ConfigError(format!(
                "the {} key has {bits} bits; Latchkey needs at least {MIN_BITS}: generate new \
                 keys with `latchkey keys generate --bits 3072` (or `latchkey keys rotate --bits \
                 3072`)",
                kind.as_str()
            )));
        }
        if let Some(public_pem) = public_pem {
            let given = parse_public(public_pem).map_err(|err| {
                ConfigError(format!(
                    "the {} public key is not a valid RSA public key in PEM form ({err})",
                    kind.as_str()
                ))
            })?;
            if given != public {
                return Err(ConfigError(format!(
                    "the {kind} public key does not match the {kind} private key: regenerate the \
                     pair with `latchkey keys generate --force`, or fix the paths",
                    kind = kind.as_str()
                )));
            }
        }
        let jwk = PublicJwk {
            kid: String::new(),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        };
        let kid = thumbprint(&jwk.n, &jwk.e);
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes())
            .map_err(|err| ConfigError(format!("the {} private key: {err}", kind.as_str())))?;
        let key_pair = private
            .to_pkcs8_der()
            .map_err(|err| err.to_string())
            .and_then(|der| {
                aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
                    .map_err(|err| err.to_string())
            })
            .map_err(|err| ConfigError(format!("the {} private key: {err}", kind.as_str())))?;
        let decoding = DecodingKey::from_rsa_components(&jwk.n, &jwk.e)
            .map_err(|err| ConfigError(format!("the {} public key: {err}", kind.as_str())))?;
        // Verification uses the public key parsed here, once, not rebuilt per token.
        use aws_lc_rs::signature::KeyPair;
        super::rs256::remember(&decoding, key_pair.public_key().as_ref());
        Ok(Self {
            bits,
            jwk: PublicJwk {
                kid: kid.clone(),
                ..jwk
            },
            kid,
            encoding,
            key_pair,
            decoding,
        })
    }
}

/// A key of a running service with its place in the rotation.
pub struct ManagedKey {
    pub key: SigningKey,
    pub created_at: DateTime<Utc>,
    pub signs_from: DateTime<Utc>,
    pub retires_at: Option<DateTime<Utc>>,
}

/// Every key of a running service, both kinds, each list ordered by `signs_from`.
pub struct Keys {
    access: Vec<ManagedKey>,
    refresh: Vec<ManagedKey>,
}

impl Keys {
    /// Loads, parses and checks the configured keys. In development, a key directory with no
    /// manifest and none of the four files gets fresh keys first (loudly). Every problem is a
    /// startup refusal (production never passes `generate_missing`).
    pub fn load(source: &KeySource, generate_missing: bool) -> Result<Self, ConfigError> {
        let entries: Vec<(KeyKind, ManagedKey)> = match source {
            KeySource::Files(paths) if paths.dir.join(MANIFEST_FILE).exists() => {
                let manifest = Manifest::read(&paths.dir).map_err(ConfigError)?;
                let mut keys = Vec::with_capacity(manifest.keys.len());
                for entry in &manifest.keys {
                    let private = paths.dir.join(&entry.private_key);
                    let key = SigningKey::from_pem(
                        entry.kind,
                        &read_key_file(&private)?,
                        Some(&read_key_file(&paths.dir.join(&entry.public_key))?),
                    )
                    .map_err(|err| ConfigError(format!("{}: {}", private.display(), err.0)))?;
                    if key.kid != entry.kid {
                        return Err(ConfigError(format!(
                            "{}: the {} key {} has kid {}, not the {} the manifest says: the \
                             files were replaced; restore them or fix the manifest",
                            paths.dir.join(MANIFEST_FILE).display(),
                            entry.kind.as_str(),
                            entry.private_key,
                            key.kid,
                            entry.kid
                        )));
                    }
                    keys.push((
                        entry.kind,
                        ManagedKey {
                            key,
                            created_at: entry.created_at,
                            signs_from: entry.signs_from,
                            retires_at: entry.retires_at,
                        },
                    ));
                }
                keys
            }
            KeySource::Files(paths) => {
                let missing: Vec<&PathBuf> =
                    paths.all().into_iter().filter(|p| !p.exists()).collect();
                if missing.len() == 4 && generate_missing {
                    tracing::warn!(
                        dir = %paths.dir.display(),
                        "no RSA keys found: generating DEVELOPMENT keys. Never use these in production; \
                         run `latchkey keys generate` and set APP_ENV=production there"
                    );
                    generate_pair_files(
                        &paths.access_private,
                        &paths.access_public,
                        DEFAULT_BITS,
                        false,
                    )
                    .and_then(|()| {
                        generate_pair_files(
                            &paths.refresh_private,
                            &paths.refresh_public,
                            DEFAULT_BITS,
                            false,
                        )
                    })
                    .map_err(|err| {
                        ConfigError(format!("could not generate development keys: {err}"))
                    })?;
                } else if let Some(path) = missing.first() {
                    return Err(ConfigError(format!(
                        "key file {} is missing: create keys with `latchkey keys generate --dir {}`, or \
                         point the *_PATH variables at existing PEM files",
                        path.display(),
                        path.parent().unwrap_or_else(|| Path::new(".")).display()
                    )));
                }
                vec![
                    (
                        KeyKind::Access,
                        ManagedKey::from_start(SigningKey::from_pem(
                            KeyKind::Access,
                            &read_key_file(&paths.access_private)?,
                            Some(&read_key_file(&paths.access_public)?),
                        )?),
                    ),
                    (
                        KeyKind::Refresh,
                        ManagedKey::from_start(SigningKey::from_pem(
                            KeyKind::Refresh,
                            &read_key_file(&paths.refresh_private)?,
                            Some(&read_key_file(&paths.refresh_public)?),
                        )?),
                    ),
                ]
            }
            KeySource::Inline(InlineKeys {
                access_private,
                access_public,
                refresh_private,
                refresh_public,
            }) => vec![
                (
                    KeyKind::Access,
                    ManagedKey::from_start(SigningKey::from_pem(
                        KeyKind::Access,
                        access_private.expose_secret(),
                        Some(access_public),
                    )?),
                ),
                (
                    KeyKind::Refresh,
                    ManagedKey::from_start(SigningKey::from_pem(
                        KeyKind::Refresh,
                        refresh_private.expose_secret(),
                        Some(refresh_public),
                    )?),
                ),
            ],
        };
        let mut keys = Keys {
            access: Vec::new(),
            refresh: Vec::new(),
        };
        for (kind, key) in entries {
            keys.list_mut(kind).push(key);
        }
        keys.access.sort_by_key(|k| k.signs_from);
        keys.refresh.sort_by_key(|k| k.signs_from);
        keys.check()?;
        Ok(keys)
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

    fn check(&self) -> Result<(), ConfigError> {
        let now = Utc::now().timestamp();
        for kind in KeyKind::ALL {
            if self.signing_at(kind, now).is_none() {
                return Err(ConfigError(format!(
                    "no {} key signs yet: every key in the manifest has `signs_from` in the \
                     future; keep the previous key until the new one takes over",
                    kind.as_str()
                )));
            }
            let keys = self.all(kind);
            for (i, key) in keys.iter().enumerate() {
                if keys[..i].iter().any(|k| k.key.kid == key.key.kid) {
                    return Err(ConfigError(format!(
                        "the {} key {} is listed twice in the manifest",
                        kind.as_str(),
                        key.key.kid
                    )));
                }
            }
        }
        // One pair for both kinds would let a refresh token pass as an access token.
        for access in &self.access {
            if self.find(KeyKind::Refresh, &access.key.kid).is_some() {
                return Err(ConfigError(
                    "the access and refresh key pairs are the same key: generate two distinct pairs \
                     with `latchkey keys generate --force`"
                        .into(),
                ));
            }
        }
        Ok(())
    }
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

fn read_key_file(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|err| {
        ConfigError(format!(
            "key file {} is unreadable ({err}): check its path and permissions",
            path.display()
        ))
    })
}

/// `keys/manifest.json`: every key of a rotating key directory. File names are relative to the
/// directory (absolute paths are kept as they are).
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

/// How `keys rotate` schedules a new key.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// Seconds between publishing the new key and its first signature. Must exceed how long
    /// verifiers cache the JWKS (`JWKS_MAX_AGE`) plus how long instances take to reload.
    pub delay_secs: i64,
    /// The longest lifetime of a token of the rotated kind (`ACCESS_TOKEN_TTL` or
    /// `REFRESH_TOKEN_TTL`).
    pub token_ttl_secs: i64,
    /// Verification leeway (`JWT_LEEWAY`): a token verifies this long after its `exp`.
    pub leeway_secs: i64,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        serde_json::from_str(&text).map_err(|err| {
            format!(
                "{} is not a valid key manifest ({err}); see keys/README.md",
                path.display()
            )
        })
    }

    /// The manifest of `paths.dir`, or, for a single-key directory without one, a manifest
    /// describing its four files (each pair signing from the beginning).
    pub fn read_or_describe(paths: &KeyPaths) -> Result<Self, String> {
        if paths.dir.join(MANIFEST_FILE).exists() {
            return Self::read(&paths.dir);
        }
        let mut keys = Vec::with_capacity(2);
        for (kind, private, public) in [
            (KeyKind::Access, &paths.access_private, &paths.access_public),
            (
                KeyKind::Refresh,
                &paths.refresh_private,
                &paths.refresh_public,
            ),
        ] {
            let key = SigningKey::from_pem(
                kind,
                &read_key_file(private).map_err(|err| err.0)?,
                Some(&read_key_file(public).map_err(|err| err.0)?),
            )
            .map_err(|err| err.0)?;
            keys.push(ManifestEntry {
                kind,
                kid: key.kid,
                private_key: relative_name(&paths.dir, private)?,
                public_key: relative_name(&paths.dir, public)?,
                created_at: DateTime::UNIX_EPOCH,
                signs_from: DateTime::UNIX_EPOCH,
                retires_at: None,
            });
        }
        Ok(Self { keys })
    }

    /// Writes `dir/manifest.json` atomically (a temporary file renamed over it), so a running
    /// instance reloading at the same moment reads either the old or the new manifest.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|err| err.to_string())?;
        let temp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        write_file(&temp, &format!("{text}\n"), 0o644)?;
        fs::rename(&temp, dir.join(MANIFEST_FILE))
            .map_err(|err| format!("{}: {err}", dir.join(MANIFEST_FILE).display()))
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

    /// Sets `retires_at` of every key of `kind` that a later key replaces: the moment it stops
    /// signing, plus the longest token lifetime, plus the leeway. An earlier value is kept if it
    /// is later (never shorten a retirement: tokens already out there decide it).
    fn schedule_retirements(&mut self, kind: KeyKind, policy: &RotationPolicy) {
        let mut order: Vec<usize> = (0..self.keys.len())
            .filter(|i| self.keys[*i].kind == kind)
            .collect();
        order.sort_by_key(|i| (self.keys[*i].signs_from, *i));
        for pair in order.windows(2) {
            let stops_signing = self.keys[pair[1]].signs_from;
            let retires = stops_signing
                + chrono::Duration::seconds(policy.token_ttl_secs + policy.leeway_secs);
            let entry = &mut self.keys[pair[0]];
            entry.retires_at = Some(entry.retires_at.map_or(retires, |t| t.max(retires)));
        }
    }
}

fn relative_name(dir: &Path, path: &Path) -> Result<String, String> {
    let name = match path.strip_prefix(dir) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => std::path::absolute(path).map_err(|err| format!("{}: {err}", path.display()))?,
    };
    name.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))
}

/// Adds a new key of `kind` to the directory of `paths`: its files are written as
/// `<kind>-<kid>.pem` (0600) and `<kind>-<kid>.pub.pem`, and the manifest (created from the four
/// single-key files if there is none yet) gets an entry that signs from `now + delay`. The key
/// it replaces is scheduled to retire. Returns the new entry.
pub fn rotate(
    paths: &KeyPaths,
    kind: KeyKind,
    pair: &GeneratedPair,
    policy: &RotationPolicy,
    now: DateTime<Utc>,
) -> Result<ManifestEntry, String> {
    if policy.delay_secs < 0 {
        return Err("the delay must not be negative".into());
    }
    let mut manifest = Manifest::read_or_describe(paths)?;
    let key = SigningKey::from_pem(
        kind,
        pair.private_pem.expose_secret(),
        Some(&pair.public_pem),
    )
    .map_err(|err| err.0)?;
    if manifest.keys.iter().any(|k| k.kid == key.kid) {
        return Err(format!("the key {} is already in the manifest", key.kid));
    }
    let private_key = format!("{}-{}.pem", kind.as_str(), key.kid);
    let public_key = format!("{}-{}.pub.pem", kind.as_str(), key.kid);
    for name in [&private_key, &public_key] {
        if paths.dir.join(name).exists() {
            return Err(format!("{} exists already", paths.dir.join(name).display()));
        }
    }
    fs::create_dir_all(&paths.dir).map_err(|err| format!("{}: {err}", paths.dir.display()))?;
    write_file(
        &paths.dir.join(&private_key),
        pair.private_pem.expose_secret(),
        0o600,
    )?;
    write_file(&paths.dir.join(&public_key), &pair.public_pem, 0o644)?;
    // Whole seconds: token `iat`s are whole seconds, and so is the comparison that picks the key.
    let now = Utc
        .timestamp_opt(now.timestamp(), 0)
        .single()
        .unwrap_or(now);
    let entry = ManifestEntry {
        kind,
        kid: key.kid,
        private_key,
        public_key,
        created_at: now,
        signs_from: now + chrono::Duration::seconds(policy.delay_secs),
        retires_at: None,
    };
    manifest.keys.push(entry.clone());
    manifest.schedule_retirements(kind, policy);
    manifest.write(&paths.dir)?;
    Ok(entry)
}

/// Removes from the manifest, then from disk, every key whose tokens have all expired at `now`
/// (state [`KeyState::Expired`]). A directory without a manifest has nothing to prune. Returns
/// the removed entries.
pub fn prune(paths: &KeyPaths, now: DateTime<Utc>) -> Result<Vec<ManifestEntry>, String> {
    if !paths.dir.join(MANIFEST_FILE).exists() {
        return Ok(Vec::new());
    }
    let manifest = Manifest::read(&paths.dir)?;
    let (expired, kept): (Vec<_>, Vec<_>) = manifest
        .keys
        .iter()
        .enumerate()
        .map(|(i, entry)| (manifest.state(i, now), entry.clone()))
        .partition(|(state, _)| *state == KeyState::Expired);
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    // The manifest first: an instance reloading in between never looks for a deleted file.
    Manifest {
        keys: kept.into_iter().map(|(_, e)| e).collect(),
    }
    .write(&paths.dir)?;
    let removed: Vec<ManifestEntry> = expired.into_iter().map(|(_, e)| e).collect();
    for entry in &removed {
        for name in [&entry.private_key, &entry.public_key] {
            let path = paths.dir.join(name);
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                return Err(format!("{}: {err}", path.display()));
            }
        }
    }
    Ok(removed)
}

/// RFC 7638 thumbprint of an RSA public key: SHA-256 over the canonical JWK
/// `{"e":..,"kty":"RSA","n":..}` (members in lexicographic order, no whitespace), base64url.
pub fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn parse_private(pem: &str) -> Result<RsaPrivateKey, String> {
    RsaPrivateKey::from_pkcs8_pem(pem)
        .map_err(|err| err.to_string())
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem).map_err(|err| err.to_string()))
}

fn parse_public(pem: &str) -> Result<RsaPublicKey, String> {
    RsaPublicKey::from_public_key_pem(pem)
        .map_err(|err| err.to_string())
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem).map_err(|err| err.to_string()))
}

/// A freshly generated key pair as PEM text (PKCS#8 private, SPKI public).
pub struct GeneratedPair {
    pub private_pem: SecretString,
    pub public_pem: String,
}

/// Generates an RSA key pair with the `rsa` crate. Slow (hundreds of milliseconds): callers on
/// the async runtime run it on a blocking thread.
pub fn generate_pair(bits: usize) -> Result<GeneratedPair, String> {
    let private =
        RsaPrivateKey::new(&mut rand::thread_rng(), bits).map_err(|err| err.to_string())?;
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| err.to_string())?
        .to_string();
    let public_pem = RsaPublicKey::from(&private)
        .to_public_key_pem(LineEnding::LF)
        .map_err(|err| err.to_string())?;
    Ok(GeneratedPair {
        private_pem: private_pem.into(),
        public_pem,
    })
}

/// Generates a pair into two files. The private file is created with mode 0600 before any key
/// byte is written. Refuses to overwrite existing files unless `force`.
pub fn generate_pair_files(
    private_path: &Path,
    public_path: &Path,
    bits: usize,
    force: bool,
) -> Result<(), String> {
    if !force {
        for path in [private_path, public_path] {
            if path.exists() {
                return Err(format!(
                    "{} exists; pass --force to replace it (tokens signed by the old key stop verifying)",
                    path.display()
                ));
            }
        }
    }
    if let Some(dir) = private_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    }
    let pair = generate_pair(bits)?;
    write_file(private_path, pair.private_pem.expose_secret(), 0o600)?;
    write_file(public_path, &pair.public_pem, 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options
        .open(path)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    #[cfg(unix)]
    {
        // `mode` only applies when the file is created; --force must not keep looser bits.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|err| format!("{}: {err}", path.display()))?;
    }
    file.write_all(contents.as_bytes())
        .map_err(|err| format!("{}: {err}", path.display()))
}

/// Writes both pairs into `dir` with the default file names.
pub fn generate_key_dir(dir: &Path, bits: usize, force: bool) -> Result<KeyPaths, String> {
    if dir.join(MANIFEST_FILE).exists() {
        // Replacing keys under a manifest would orphan its entries: rotation is the way there.
        return Err(format!(
            "{} has a key manifest: use `latchkey keys rotate --dir {}` to add keys",
            dir.display(),
            dir.display()
        ));
    }
    let paths = KeyPaths::in_dir(dir);
    generate_pair_files(&paths.access_private, &paths.access_public, bits, force)?;
    generate_pair_files(&paths.refresh_private, &paths.refresh_public, bits, force)?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // The example key of RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
