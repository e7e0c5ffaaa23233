//! `latchkey keys ...`: generating, rotating, listing and pruning key pairs.

use std::path::{Path, PathBuf};

use crate::{
    auth::keys::{self, KeyKind, KeyPaths, Manifest, RotationPolicy},
    config::Settings,
};

/// `keys generate`: both pairs into `dir`. With `if_missing`, a directory that has its keys
/// (the four files, or a manifest) is left alone.
pub async fn generate(
    dir: PathBuf,
    bits: usize,
    force: bool,
    if_missing: bool,
) -> anyhow::Result<()> {
    let paths = KeyPaths::in_dir(&dir);
    let present = dir.join(keys::MANIFEST_FILE).exists() || paths.all().iter().all(|p| p.exists());
    if if_missing && present {
        if crate::startup::mfa::ensure_key_file(&dir)? {
            println!(
                "wrote {} (0600)",
                dir.join(crate::startup::mfa::MFA_KEY_FILE).display()
            );
        }
        println!("{} has its keys: nothing to do", dir.display());
        return Ok(());
    }
    let key_dir = dir.clone();
    let paths = tokio::task::spawn_blocking(move || keys::generate_key_dir(&key_dir, bits, force))
        .await??;
    println!(
        "wrote {} (0600), {}, {} (0600), {}",
        paths.access_private.display(),
        paths.access_public.display(),
        paths.refresh_private.display(),
        paths.refresh_public.display()
    );
    // The second factor's sealing key lives beside the RSA keys (kept if present: replacing
    // it would make every enrolled secret unreadable).
    if crate::startup::mfa::ensure_key_file(&dir)? {
        println!(
            "wrote {} (0600)",
            dir.join(crate::startup::mfa::MFA_KEY_FILE).display()
        );
    }
    Ok(())
}

/// `keys rotate`: a new pair of `kind`, published now, signing after the delay.
pub async fn rotate(
    kind: KeyKind,
    dir: PathBuf,
    bits: usize,
    delay: Option<u64>,
) -> anyhow::Result<()> {
    // Lifetimes, leeway and the JWKS max-age come from the service's own settings: run this
    // with the same environment (or app.env) as the service.
    let settings = Settings::from_env()?;
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let default_delay = settings.keys.jwks_max_age.as_secs().saturating_add(60);
    let policy = RotationPolicy {
        delay_secs: i64::try_from(delay.unwrap_or(default_delay))
            .map_err(|_| anyhow::anyhow!("--delay is too large"))?,
        token_ttl_secs: match kind {
            KeyKind::Access => secs(settings.tokens.access_ttl),
            KeyKind::Refresh => secs(settings.tokens.refresh_ttl),
        },
        leeway_secs: secs(settings.tokens.leeway),
    };
    let paths = KeyPaths::in_dir(&dir);
    let entry = tokio::task::spawn_blocking(move || {
        let pair = keys::generate_pair(bits)?;
        keys::rotate(&paths, kind, &pair, &policy, chrono::Utc::now())
    })
    .await??;
    // Only access keys are published; refresh keys are verified by Latchkey alone.
    let visibility = match kind {
        KeyKind::Access => "published in the JWKS now",
        KeyKind::Refresh => "loaded by every instance within KEYS_RELOAD_SECS",
    };
    println!(
        "added {kind} key {} ({}, 0600): {visibility}, signs from {}",
        entry.kid,
        dir.join(&entry.private_key).display(),
        entry.signs_from.to_rfc3339()
    );
    Ok(())
}

/// `keys list`.
pub fn list(dir: &Path) -> anyhow::Result<()> {
    let manifest = Manifest::read_or_describe(&KeyPaths::in_dir(dir))?;
    print!("{}", list_keys(&manifest, chrono::Utc::now()));
    Ok(())
}

/// `keys prune`.
pub fn prune(dir: &Path) -> anyhow::Result<()> {
    let removed = keys::prune(&KeyPaths::in_dir(dir), chrono::Utc::now())?;
    if removed.is_empty() {
        println!("nothing to prune");
    }
    for entry in removed {
        println!(
            "removed {} key {} ({}, {})",
            entry.kind, entry.kid, entry.private_key, entry.public_key
        );
    }
    Ok(())
}

/// The table `latchkey keys list` prints: one line per key.
pub fn list_keys(manifest: &Manifest, now: chrono::DateTime<chrono::Utc>) -> String {
    let time = |t: chrono::DateTime<chrono::Utc>| {
        if t == chrono::DateTime::UNIX_EPOCH {
            "-".to_owned()
        } else {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        }
    };
    let mut out = format!(
        "{:<8} {:<44} {:<9} {:<20} {:<20} {:<20}\n",
        "KIND", "KID", "STATE", "CREATED", "SIGNS FROM", "RETIRES AT"
    );
    for (i, entry) in manifest.keys.iter().enumerate() {
        out.push_str(&format!(
            "{:<8} {:<44} {:<9} {:<20} {:<20} {:<20}\n",
            entry.kind.as_str(),
            entry.kid,
            manifest.state(i, now).as_str(),
            time(entry.created_at),
            // No key signs before it exists: a single key's "from the beginning" reads as its
            // creation.
            time(entry.signs_from.max(entry.created_at)),
            entry.retires_at.map_or_else(|| "-".to_owned(), time),
        ));
    }
    out
}
