//! Signing and verifying Latchkey's two kinds of JWT (API.md section 2).
//!
//! Verification pins RS256: `alg: none` and HS256 (the classic "public key as HMAC secret"
//! confusion) are rejected before any key is used, because the accepted algorithm list is fixed
//! to RS256 rather than taken from the token header. Access and refresh tokens are signed by
//! different key pairs *and* carry different `typ` values, so neither can stand in for the other.
//!
//! Several keys of each kind may exist during a rotation: signing uses the kind's current key,
//! verification the key the token's `kid` names (an unknown `kid` never verifies). The key set
//! is swapped as a whole when the key directory is reloaded ([`TokenService::reload`]).

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    keys::{KeyKind, KeySource, Keys, LoadRules, SigningKey},
    rs256,
};

/// `typ` claim of refresh tokens. Access tokens carry none.
pub const REFRESH_TYP: &str = "refresh";

/// How the user proved who they are, as the `amr` claim says (RFC 8176): a password, or a
/// password and a one-time code (TOTP or recovery code). Read straight from the token's
/// JSON, without allocating: the guard decodes it on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Amr {
    /// `["pwd"]`; also what a token from before `amr` existed counts as.
    #[default]
    Password,
    /// `["pwd", "otp"]`.
    PasswordAndOtp,
}

impl Serialize for Amr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let values: &[&str] = match self {
            Amr::Password => &["pwd"],
            Amr::PasswordAndOtp => &["pwd", "otp"],
        };
        values.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Amr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(AmrVisitor)
    }
}

struct AmrVisitor;

impl<'de> serde::de::Visitor<'de> for AmrVisitor {
    type Value = Amr;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of authentication methods")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Amr, A::Error> {
        let mut amr = Amr::Password;
        while let Some(OtpMethod(otp)) = seq.next_element()? {
            if otp {
                amr = Amr::PasswordAndOtp;
            }
        }
        Ok(amr)
    }
}

/// One `amr` entry: whether it is `otp`, looked at in place.
struct OtpMethod(bool);

impl<'de> Deserialize<'de> for OtpMethod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Method;
        impl serde::de::Visitor<'_> for Method {
            type Value = OtpMethod;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an authentication method name")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<OtpMethod, E> {
                Ok(OtpMethod(value == "otp"))
            }
        }
        deserializer.deserialize_str(Method)
    }
}

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
    /// How the user signed in: `["pwd"]` or `["pwd", "otp"]`.
    #[serde(default)]
    pub amr: Amr,
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
    /// The session's `amr`, handed on to every pair its refreshes mint.
    #[serde(default)]
    pub amr: Amr,
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

/// What identifies a pair apart from its user and session: its token ids and issue time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairIds {
    pub access_jti: Uuid,
    pub refresh_jti: Uuid,
    pub iat: i64,
}

impl PairIds {
    /// The ids of a pair's claims.
    pub fn of(claims: &PairClaims) -> Self {
        Self {
            access_jti: claims.access.jti,
            refresh_jti: claims.refresh.jti,
            iat: claims.access.iat,
        }
    }

    /// The form a session store keeps: `access_jti.refresh_jti.iat`.
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.access_jti, self.refresh_jti, self.iat)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let ids = Self {
            access_jti: Uuid::parse_str(parts.next()?).ok()?,
            refresh_jti: Uuid::parse_str(parts.next()?).ok()?,
            iat: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(ids)
    }
}

/// Whose pair: the user, their role, the session and how it was signed in to.
#[derive(Debug, Clone, Copy)]
pub struct PairSubject<'a> {
    pub user_id: Uuid,
    pub role: &'a str,
    pub sid: Uuid,
    pub amr: Amr,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// `iss` of every token (`JWT_ISSUER`).
    pub issuer: String,
    /// `aud` of every token (`JWT_AUDIENCE`).
    pub audience: String,
    /// `ACCESS_TOKEN_TTL`.
    pub access_ttl: Duration,
    /// `REFRESH_TOKEN_TTL`: also the lifetime of a session that is not refreshed.
    pub refresh_ttl: Duration,
    /// `JWT_LEEWAY`: clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl TokenSettings {
    /// The access lifetime in whole seconds, as `exp` counts.
    pub fn access_ttl_secs(&self) -> i64 {
        secs(self.access_ttl)
    }

    /// The refresh lifetime in whole seconds, as `exp` counts.
    pub fn refresh_ttl_secs(&self) -> i64 {
        secs(self.refresh_ttl)
    }
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Signs and verifies tokens with keys parsed once per load of the key set.
pub struct TokenService {
    /// The current key set. Readers clone the `Arc` under a momentary read lock and work on
    /// that snapshot; a reload replaces the whole set at once, so a request never sees half of
    /// a rotation.
    keys: RwLock<Arc<Keys>>,
    settings: TokenSettings,
    validation: Validation,
}

impl TokenService {
    pub fn new(keys: Keys, settings: TokenSettings) -> Self {
        rs256::install();
        // Pinned to RS256 whatever the header says: no `none`, no HMAC with a public key.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = settings.leeway.as_secs();
        Self {
            keys: RwLock::new(Arc::new(keys)),
            settings,
            validation,
        }
    }

    /// A snapshot of the current key set.
    pub fn keys(&self) -> Arc<Keys> {
        // A poisoned lock only means a panic elsewhere while swapping an `Arc`: the value is
        // whole either way.
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the key set (after a reload of the key directory).
    pub fn replace_keys(&self, keys: Keys) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// Re-reads the keys from `source`. A key set that fails to load (a missing, unreadable or
    /// broken file, a bad manifest, a production refusal) is logged and the current set stays:
    /// a bad edit of the key directory must not take the service down. Returns whether the set
    /// changed.
    pub async fn reload(&self, source: &KeySource, rules: LoadRules) -> bool {
        let source = source.clone();
        // Never generates keys: that happens only at first start.
        let rules = rules.reading_only();
        let loaded = tokio::task::spawn_blocking(move || Keys::load(&source, rules)).await;
        match loaded {
            Ok(Ok(keys)) => {
                if keys.same_as(&self.keys()) {
                    return false;
                }
                let kids = |kind| {
                    keys.all(kind)
                        .iter()
                        .map(|k| k.key.kid.clone())
                        .collect::<Vec<_>>()
                };
                tracing::info!(
                    access = ?kids(KeyKind::Access),
                    refresh = ?kids(KeyKind::Refresh),
                    "key set reloaded"
                );
                self.replace_keys(keys);
                true
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "key reload failed: keeping the previous keys");
                false
            }
            Err(err) => {
                tracing::error!(error = %err, "key reload failed: keeping the previous keys");
                false
            }
        }
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Claims for a fresh pair of `session`: new `jti`s, `iat` = now.
    pub fn new_pair_claims(&self, session: &PairSubject<'_>) -> PairClaims {
        let ids = PairIds {
            access_jti: Uuid::new_v4(),
            refresh_jti: Uuid::new_v4(),
            iat: chrono::Utc::now().timestamp(),
        };
        self.pair_claims(session, ids)
    }

    /// The claims of the pair with these ids and issue time: signing them again gives the very
    /// tokens first issued with them (RS256 is deterministic).
    pub fn pair_claims(&self, session: &PairSubject<'_>, ids: PairIds) -> PairClaims {
        let (user_id, role, sid) = (session.user_id, session.role, session.sid);
        let amr = session.amr;
        let now = ids.iat;
        PairClaims {
            access: AccessClaims {
                iss: self.settings.issuer.clone(),
                aud: self.settings.audience.clone(),
                sub: user_id,
                sid,
                jti: ids.access_jti,
                iat: now,
                nbf: now,
                exp: now + self.settings.access_ttl_secs(),
                role: role.to_owned(),
                amr,
                typ: None,
            },
            refresh: RefreshClaims {
                iss: self.settings.issuer.clone(),
                aud: self.settings.audience.clone(),
                sub: user_id,
                sid,
                jti: ids.refresh_jti,
                iat: now,
                nbf: now,
                exp: now + self.settings.refresh_ttl_secs(),
                amr,
                typ: REFRESH_TYP.to_owned(),
            },
        }
    }

    /// Mints a fresh pair for `session`.
    pub async fn issue_pair(
        self: &Arc<Self>,
        session: &PairSubject<'_>,
    ) -> anyhow::Result<IssuedPair> {
        self.sign_pair(self.new_pair_claims(session)).await
    }

    /// Signs both tokens of a pair. RSA signing takes hundreds of microseconds, so it runs on a
    /// blocking thread, never on the async workers. RS256 (PKCS#1 v1.5) is deterministic: the
    /// same claims give the same token, which is how a refresh inside the grace window hands
    /// back the very pair of the rotation it duplicates without the store holding any token.
    pub async fn sign_pair(self: &Arc<Self>, claims: PairClaims) -> anyhow::Result<IssuedPair> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let keys = this.keys();
            let access_key = keys
                .signing_at(KeyKind::Access, claims.access.iat)
                .ok_or_else(|| anyhow::anyhow!("no access key signs at {}", claims.access.iat))?;
            let refresh_key = keys
                .signing_at(KeyKind::Refresh, claims.refresh.iat)
                .ok_or_else(|| anyhow::anyhow!("no refresh key signs at {}", claims.refresh.iat))?;
            let access_token = sign(access_key, &claims.access)?;
            let refresh_token = sign(refresh_key, &claims.refresh)?;
            Ok(IssuedPair {
                access_token,
                access: claims.access,
                refresh_token,
                refresh: claims.refresh,
            })
        })
        .await?
    }

    /// Verifies an access token: RS256 signature by the access key its `kid` names, `iss`,
    /// `aud`, `exp`, `nbf`, and no refresh `typ`.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let claims: AccessClaims = self.verify(KeyKind::Access, token)?;
        if claims.typ.is_some() {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    /// Verifies a refresh token: RS256 signature by the refresh key its `kid` names, the
    /// standard claims, and `typ: "refresh"`.
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenError> {
        let claims: RefreshClaims = self.verify(KeyKind::Refresh, token)?;
        if claims.typ != REFRESH_TYP {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    fn verify<T: serde::de::DeserializeOwned>(
        &self,
        kind: KeyKind,
        token: &str,
    ) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Invalid);
        }
        // The key is chosen by `kid` among the keys of this kind only; a token without a `kid`,
        // or naming a key we do not hold (or a key of the other kind), never verifies.
        let keys = self.keys();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| keys.find(kind, kid))
            .ok_or(TokenError::Invalid)?;
        rs256::verify_with(&key.verifier, || {
            jsonwebtoken::decode::<T>(token, &key.decoding, &self.validation)
        })
        .map(|data| data.claims)
        .map_err(|err| match err.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })
    }
}

/// The JWS compact serialisation jsonwebtoken's `encode` produces (same header, same
/// base64url, byte for byte: see the test below), but signed with the key pair parsed once at
/// load time instead of re-parsing the DER for every token.
fn sign<T: Serialize>(key: &SigningKey, claims: &T) -> anyhow::Result<String> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.kid = Some(key.kid.clone());
    let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
    let mut signature = vec![0; key.key_pair.public_modulus_len()];
    key.key_pair
        .sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            token.as_bytes(),
            &mut signature,
        )
        .map_err(|err| anyhow::anyhow!("RS256 signing failed: {err}"))?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{KeyKind, generate_pair};
    use secrecy::ExposeSecret;

    #[test]
    fn amr_reads_and_writes_the_rfc_8176_list() {
        let json = |amr: Amr| serde_json::to_string(&amr).unwrap();
        assert_eq!(json(Amr::Password), r#"["pwd"]"#);
        assert_eq!(json(Amr::PasswordAndOtp), r#"["pwd","otp"]"#);
        let read = |text: &str| serde_json::from_str::<Amr>(text);
        assert_eq!(read(r#"["pwd","otp"]"#).unwrap(), Amr::PasswordAndOtp);
        assert_eq!(read(r#"["otp","pwd","mfa"]"#).unwrap(), Amr::PasswordAndOtp);
        assert_eq!(read(r#"["pwd"]"#).unwrap(), Amr::Password);
        assert_eq!(read("[]").unwrap(), Amr::Password);
        assert!(read(r#""otp""#).is_err() && read("[1]").is_err());
        // Tokens from before the claim existed.
        let claims: RefreshClaims = serde_json::from_value(serde_json::json!({
            "iss": "i", "aud": "a", "sub": Uuid::nil(), "sid": Uuid::nil(), "jti": Uuid::nil(),
            "iat": 0, "nbf": 0, "exp": 1, "typ": "refresh"
        }))
        .unwrap();
        assert_eq!(claims.amr, Amr::Password);
    }

    #[test]
    fn the_parsed_once_signer_matches_jsonwebtoken_encode_byte_for_byte() {
        let pair = generate_pair(2048).unwrap();
        let key = SigningKey::from_pem(
            KeyKind::Access,
            pair.private_pem.expose_secret(),
            Some(&pair.public_pem),
        )
        .unwrap();
        let claims = serde_json::json!({"sub": "someone", "exp": 2_000_000_000, "role": "user"});
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.kid = Some(key.kid.clone());
        let reference = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
        assert_eq!(sign(&key, &claims).unwrap(), reference);
    }
}
