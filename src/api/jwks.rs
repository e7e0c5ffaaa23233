//! `/.well-known/jwks.json`: the access-token public keys, for services that verify tokens
//! without calling Latchkey. Refresh keys are never published: only Latchkey verifies those.

use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::ApiTags;
use crate::{auth::keys::KeyKind, state::AppState};

/// One RSA public key (RFC 7517).
#[derive(Debug, Clone, Object)]
pub struct Jwk {
    /// Always `RSA`.
    pub kty: String,
    /// RFC 7638 thumbprint; matches the `kid` header of the tokens it signed.
    pub kid: String,
    /// Always `sig`.
    #[oai(rename = "use")]
    pub use_: String,
    /// Always `RS256`.
    pub alg: String,
    /// Modulus, base64url without padding.
    pub n: String,
    /// Public exponent, base64url without padding.
    pub e: String,
}

/// A JWK set.
#[derive(Debug, Clone, Object)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

#[derive(ApiResponse)]
pub enum JwksResult {
    /// The keys that verify access tokens, chosen by the token's `kid`. During a key rotation
    /// the set holds several keys: a new key is published here before it signs anything, and a
    /// replaced key stays until every token it signed has expired. Cache the set per
    /// `Cache-Control`; on an unknown `kid`, refetch (at most once every few seconds).
    #[oai(status = 200)]
    Ok(Json<JwkSet>, #[oai(header = "Cache-Control")] String),
}

pub struct JwksApi;

#[OpenApi(tag = "ApiTags::Keys")]
impl JwksApi {
    /// Access-token verification keys (JWKS).
    #[oai(
        path = "/.well-known/jwks.json",
        method = "get",
        operation_id = "get_jwks"
    )]
    async fn jwks(&self, state: poem::web::Data<&AppState>) -> JwksResult {
        // Every access key the service holds: the one signing now, a newer one that will sign
        // after its publication delay (so verifiers know it first), and replaced ones whose
        // tokens may still be valid.
        let keys = state.tokens.keys();
        let set = JwkSet {
            keys: keys
                .all(KeyKind::Access)
                .iter()
                .map(|managed| {
                    let key = &managed.key.jwk;
                    Jwk {
                        kty: "RSA".into(),
                        kid: key.kid.clone(),
                        use_: "sig".into(),
                        alg: "RS256".into(),
                        n: key.n.clone(),
                        e: key.e.clone(),
                    }
                })
                .collect(),
        };
        JwksResult::Ok(
            Json(set),
            format!(
                "public, max-age={}",
                state.settings.keys.jwks_max_age.as_secs()
            ),
        )
    }
}
