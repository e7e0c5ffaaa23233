//! The key TOTP secrets are sealed with: `MFA_ENCRYPTION_KEY`, or else the key directory's
//! `mfa.key` (written by `latchkey keys generate`; in development generated on first start,
//! like the RSA keys).

use std::{path::Path, sync::Arc};

use secrecy::{ExposeSecret, SecretString};

use crate::{
    accounts::MfaSetup,
    auth::{
        keys::{KeySource, LoadRules, read_private_key_file},
        mfa::SecretBox,
    },
    config::Settings,
};

/// The development key file in the key directory.
pub const MFA_KEY_FILE: &str = "mfa.key";

/// Why the sealing key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum MfaKeyError {
    #[error(
        "MFA_ENCRYPTION_KEY is not set and {path} does not exist: set MFA_ENCRYPTION_KEY \
         (`openssl rand -base64 32`), or run `latchkey keys generate --dir KEYS_DIR --if-missing`"
    )]
    Missing { path: String },
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::auth::mfa::MfaError),
    #[error(transparent)]
    Unsafe(#[from] crate::auth::keys::KeyError),
}

/// Fills in the development key (so instances started from these settings share it) and
/// builds the sealing box.
pub fn setup(settings: &mut Settings) -> Result<MfaSetup, MfaKeyError> {
    if settings.mfa.key.is_none() {
        let (generate, rules) = (!settings.is_production(), settings.keys.load_rules());
        settings.mfa.key = Some(match &settings.keys.source {
            KeySource::Files(paths) => key_file(&paths.dir, generate, rules)?,
            // Keys from the environment and no MFA key (development only: production refuses
            // it with the settings): one for this process alone.
            KeySource::Inline(_) => SecretBox::generate_key(),
        });
    }
    let mfa = &settings.mfa;
    let key = mfa.key.as_ref().expect("filled in above");
    let secrets = SecretBox::new(key, mfa.previous_key.as_ref())?;
    Ok(MfaSetup {
        secrets: Arc::new(secrets),
        issuer: mfa.issuer.clone(),
    })
}

/// The key in `dir/mfa.key`, read under the RSA private keys' rules (in production: refused
/// if its group or others may read it); a missing file is generated in development.
fn key_file(dir: &Path, generate: bool, rules: LoadRules) -> Result<SecretString, MfaKeyError> {
    let path = dir.join(MFA_KEY_FILE);
    if !path.exists() {
        if !generate {
            let path = path.display().to_string();
            return Err(MfaKeyError::Missing { path });
        }
        ensure_key_file(dir)?;
        tracing::warn!(path = %path.display(), "generated a development MFA_ENCRYPTION_KEY");
    }
    let text = read_private_key_file(&path, rules)?;
    Ok(SecretString::from(text.trim().to_owned()))
}

/// Writes a new `mfa.key` (mode 0600) into `dir` unless one is there; whether it wrote one.
pub fn ensure_key_file(dir: &Path) -> Result<bool, MfaKeyError> {
    let path = dir.join(MFA_KEY_FILE);
    let failed = |source| MfaKeyError::File {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(failed)?;
    write_private(&path, SecretBox::generate_key().expose_secret()).map_err(failed)?;
    Ok(true)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}
