//! Adding a key to a directory (`keys rotate`) and removing the ones whose tokens have all
//! expired (`keys prune`).

use std::fs;

use chrono::{DateTime, TimeZone, Utc};
use secrecy::ExposeSecret;

use super::{
    GeneratedPair, KeyError, KeyKind, KeyPaths, KeyState, MANIFEST_FILE, Manifest, ManifestEntry,
    SigningKey, generate::write_file,
};

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
) -> Result<ManifestEntry, KeyError> {
    if policy.delay_secs < 0 {
        return Err(KeyError::NegativeDelay);
    }
    let mut manifest = Manifest::read_or_describe(paths)?;
    let private_pem = pair.private_pem.expose_secret();
    let key = SigningKey::from_pem(kind, private_pem, Some(&pair.public_pem))?;
    if manifest.keys.iter().any(|k| k.kid == key.kid) {
        return Err(KeyError::AlreadyListed { kid: key.kid });
    }
    let private_key = format!("{kind}-{}.pem", key.kid);
    let public_key = format!("{kind}-{}.pub.pem", key.kid);
    for name in [&private_key, &public_key] {
        if paths.dir.join(name).exists() {
            let path = paths.dir.join(name);
            return Err(KeyError::Exists { path });
        }
    }
    fs::create_dir_all(&paths.dir).map_err(|source| KeyError::Io {
        path: paths.dir.clone(),
        source,
    })?;
    write_file(&paths.dir.join(&private_key), private_pem, 0o600)?;
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
pub fn prune(paths: &KeyPaths, now: DateTime<Utc>) -> Result<Vec<ManifestEntry>, KeyError> {
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
            if let Err(source) = fs::remove_file(&path)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(KeyError::Io { path, source });
            }
        }
    }
    Ok(removed)
}
