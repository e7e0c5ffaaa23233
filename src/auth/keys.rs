//! RSA key material: generated with the `rsa` crate, loaded and checked once at startup, and
//! parsed once into jsonwebtoken's `EncodingKey`/`DecodingKey` (never per request).
//!
//! Access and refresh tokens are signed by two different key pairs, so a token of one kind can
//! never verify as the other. The `kid` of a key is its RFC 7638 JWK thumbprint.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey},
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding},
    traits::PublicKeyParts,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, InlineKeys, KeyPaths, KeySource};

/// Keys shorter than this are refused in production.
pub const MIN_PRODUCTION_BITS: usize = 2048;
/// Size of generated keys unless asked otherwise.
pub const DEFAULT_BITS: usize = 2048;

/// Which of the two key pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Access,
    Refresh,
}

impl KeyKind {
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
        let decoding = DecodingKey::from_rsa_components(&jwk.n, &jwk.e)
            .map_err(|err| ConfigError(format!("the {} public key: {err}", kind.as_str())))?;
        Ok(Self {
            bits: public.size() * 8,
            jwk: PublicJwk {
                kid: kid.clone(),
                ..jwk
            },
            kid,
            encoding,
            decoding,
        })
    }
}

/// Both key pairs of a running service.
pub struct Keys {
    pub access: SigningKey,
    pub refresh: SigningKey,
}

impl Keys {
    /// Loads, parses and checks the configured keys. In development, missing key files are
    /// generated first (loudly). In production every problem is a startup refusal.
    pub fn load(
        source: &KeySource,
        generate_missing: bool,
        production: bool,
    ) -> Result<Self, ConfigError> {
        let keys = match source {
            KeySource::Files(paths) => {
                let missing: Vec<&PathBuf> =
                    paths.all().into_iter().filter(|p| !p.exists()).collect();
                if missing.len() == 4 && generate_missing {
                    let dir = paths
                        .access_private
                        .parent()
                        .unwrap_or_else(|| Path::new("."));
                    tracing::warn!(
                        dir = %dir.display(),
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
                let read = |path: &PathBuf| {
                    fs::read_to_string(path).map_err(|err| {
                        ConfigError(format!(
                            "key file {} is unreadable ({err}): check its path and permissions",
                            path.display()
                        ))
                    })
                };
                Keys {
                    access: SigningKey::from_pem(
                        KeyKind::Access,
                        &read(&paths.access_private)?,
                        Some(&read(&paths.access_public)?),
                    )?,
                    refresh: SigningKey::from_pem(
                        KeyKind::Refresh,
                        &read(&paths.refresh_private)?,
                        Some(&read(&paths.refresh_public)?),
                    )?,
                }
            }
            KeySource::Inline(InlineKeys {
                access_private,
                access_public,
                refresh_private,
                refresh_public,
            }) => Keys {
                access: SigningKey::from_pem(
                    KeyKind::Access,
                    access_private.expose_secret(),
                    Some(access_public),
                )?,
                refresh: SigningKey::from_pem(
                    KeyKind::Refresh,
                    refresh_private.expose_secret(),
                    Some(refresh_public),
                )?,
            },
        };
        keys.check(production)?;
        Ok(keys)
    }

    fn check(&self, production: bool) -> Result<(), ConfigError> {
        // One pair for both kinds would let a refresh token pass as an access token.
        if self.access.kid == self.refresh.kid {
            return Err(ConfigError(
                "the access and refresh key pairs are the same key: generate two distinct pairs \
                 with `latchkey keys generate --force`"
                    .into(),
            ));
        }
        if production {
            for key in [&self.access, &self.refresh] {
                if key.bits < MIN_PRODUCTION_BITS {
                    let kind = if std::ptr::eq(key, &self.access) {
                        "access"
                    } else {
                        "refresh"
                    };
                    return Err(ConfigError(format!(
                        "the {kind} key has {} bits; production needs at least {MIN_PRODUCTION_BITS}: \
                         generate new keys with `latchkey keys generate --bits 3072`",
                        key.bits
                    )));
                }
            }
        }
        Ok(())
    }
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
