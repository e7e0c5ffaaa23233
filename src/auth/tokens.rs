//! Signing and verifying Latchkey's two kinds of JWT (API.md section 2).
//!
//! Verification pins RS256: `alg: none` and HS256 (the classic "public key as HMAC secret"
//! confusion) are rejected before any key is used, because the accepted algorithm list is fixed
//! to RS256 rather than taken from the token header. Access and refresh tokens are signed by
//! different key pairs *and* carry different `typ` values, so neither can stand in for the other.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::{Keys, SigningKey};

/// `typ` claim of refresh tokens. Access tokens carry none.
pub const REFRESH_TYP: &str = "refresh";

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub role: String,
    /// Always absent on access tokens; a token that has it is not an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// Claims of a refresh token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshClaims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub typ: String,
}

/// Why a token was refused. Deliberately coarse: clients learn only "expired" or "invalid".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// The claims of a pair, before signing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairClaims {
    pub access: AccessClaims,
    pub refresh: RefreshClaims,
}

/// An access and a refresh token minted together for one session.
#[derive(Debug, Clone)]
pub struct IssuedPair {
    pub access_token: String,
    pub access: AccessClaims,
    pub refresh_token: String,
    pub refresh: RefreshClaims,
}

/// Token lifetimes and identity claims.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    pub leeway_secs: u64,
}

/// Signs and verifies tokens with keys parsed once at startup.
pub struct TokenService {
    keys: Arc<Keys>,
    settings: TokenSettings,
    validation: Validation,
}

impl TokenService {
    pub fn new(keys: Arc<Keys>, settings: TokenSettings) -> Self {
        // Pinned to RS256 whatever the header says: no `none`, no HMAC with a public key.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = settings.leeway_secs;
        Self {
            keys,
            settings,
            validation,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Claims for a fresh pair of session `sid`: new `jti`s, `iat` = now.
    pub fn new_pair_claims(&self, user_id: Uuid, role: &str, sid: Uuid) -> PairClaims {
        let now = chrono::Utc::now().timestamp();
        PairClaims {
            access: AccessClaims {
                iss: self.settings.issuer.clone(),
                aud: self.settings.audience.clone(),
                sub: user_id,
                sid,
                jti: Uuid::new_v4(),
                iat: now,
                nbf: now,
                exp: now + self.settings.access_ttl_secs,
                role: role.to_owned(),
                typ: None,
            },
            refresh: RefreshClaims {
                iss: self.settings.issuer.clone(),
                aud: self.settings.audience.clone(),
                sub: user_id,
                sid,
                jti: Uuid::new_v4(),
                iat: now,
                nbf: now,
                exp: now + self.settings.refresh_ttl_secs,
                typ: REFRESH_TYP.to_owned(),
            },
        }
    }

    /// Mints a fresh pair for session `sid`.
    pub async fn issue_pair(
        self: &Arc<Self>,
        user_id: Uuid,
        role: &str,
        sid: Uuid,
    ) -> anyhow::Result<IssuedPair> {
        self.sign_pair(self.new_pair_claims(user_id, role, sid))
            .await
    }

    /// Signs both tokens of a pair. RSA signing takes hundreds of microseconds, so it runs on a
    /// blocking thread, never on the async workers. RS256 (PKCS#1 v1.5) is deterministic: the
    /// same claims give the same token, which is how a refresh inside the grace window hands
    /// back the very pair of the rotation it duplicates without the store holding any token.
    pub async fn sign_pair(self: &Arc<Self>, claims: PairClaims) -> anyhow::Result<IssuedPair> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let access_token = sign(&this.keys.access, &claims.access)?;
            let refresh_token = sign(&this.keys.refresh, &claims.refresh)?;
            Ok(IssuedPair {
                access_token,
                access: claims.access,
                refresh_token,
                refresh: claims.refresh,
            })
        })
        .await?
    }

    /// Verifies an access token: RS256 signature by the access key, `iss`, `aud`, `exp`, `nbf`,
    /// and no refresh `typ`.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let claims: AccessClaims = self.verify(&self.keys.access, token)?;
        if claims.typ.is_some() {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    /// Verifies a refresh token: RS256 signature by the refresh key, the standard claims, and
    /// `typ: "refresh"`.
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenError> {
        let claims: RefreshClaims = self.verify(&self.keys.refresh, token)?;
        if claims.typ != REFRESH_TYP {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    fn verify<T: serde::de::DeserializeOwned>(
        &self,
        key: &SigningKey,
        token: &str,
    ) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        // The key is chosen by `kid`; a token naming a key we do not hold never verifies.
        if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some(key.kid.as_str()) {
            return Err(TokenError::Invalid);
        }
        jsonwebtoken::decode::<T>(token, &key.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

fn sign<T: Serialize>(key: &SigningKey, claims: &T) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.kid = Some(key.kid.clone());
    Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
}
