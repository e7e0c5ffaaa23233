//! The second factor's settings (API.md section 9): the key TOTP secrets are sealed with, the
//! previous one during a rotation, and the issuer name authenticator apps show.

use secrecy::SecretString;

use super::{ConfigError, Settings, vars::Vars};
use crate::auth::mfa::SecretBox;

/// `MFA_*`.
#[derive(Debug, Clone)]
pub struct MfaSettings {
    /// `MFA_ENCRYPTION_KEY`: 32 bytes, base64. Unset: read from `mfa.key` in the key directory
    /// (generated there in development).
    pub key: Option<SecretString>,
    /// `MFA_ENCRYPTION_KEY_PREVIOUS`: still opens secrets sealed before a rotation.
    pub previous_key: Option<SecretString>,
    /// `MFA_ISSUER`: the account's label in authenticator apps.
    pub issuer: String,
}

pub(super) fn read(vars: &Vars<'_>) -> MfaSettings {
    MfaSettings {
        key: vars.get("MFA_ENCRYPTION_KEY").map(SecretString::from),
        previous_key: vars
            .get("MFA_ENCRYPTION_KEY_PREVIOUS")
            .map(SecretString::from),
        issuer: vars.get("MFA_ISSUER").unwrap_or_else(|| "Latchkey".into()),
    }
}

pub(super) fn check(settings: &Settings) -> Result<(), ConfigError> {
    let mfa = &settings.mfa;
    for (var, key) in [
        ("MFA_ENCRYPTION_KEY", &mfa.key),
        ("MFA_ENCRYPTION_KEY_PREVIOUS", &mfa.previous_key),
    ] {
        if let Some(key) = key
            && let Err(err) = SecretBox::new(key, None)
        {
            return Err(ConfigError::refused(var, "(hidden)", err.to_string()));
        }
    }
    if mfa.issuer.contains(':') || mfa.issuer.chars().count() > 64 {
        return Err(ConfigError::refused(
            "MFA_ISSUER",
            &mfa.issuer,
            "must be at most 64 characters, without `:`",
        ));
    }
    // With key files, production reads `KEYS_DIR/mfa.key` instead (checked at startup).
    let key_dir = matches!(settings.keys.source, crate::auth::keys::KeySource::Files(_));
    if settings.is_production() && mfa.key.is_none() && !key_dir {
        return Err(ConfigError::Missing {
            var: "MFA_ENCRYPTION_KEY",
            fix: "production seals TOTP secrets with a key you provide: generate one with \
                  `openssl rand -base64 32` and keep it with the RSA keys (losing it disables \
                  every second factor)"
                .into(),
        });
    }
    Ok(())
}
