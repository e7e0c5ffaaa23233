//! RS256 verification with public keys parsed once, as jsonwebtoken's crypto provider.
//!
//! jsonwebtoken 11's aws-lc provider rebuilds the RSA public key from its modulus and exponent
//! for every token it verifies: a copy of the key, an aws-lc key object and a Montgomery setup
//! per request, ~3 us of the guard's ~20 us of RSA work (bench/README.md). This provider keeps
//! the aws-lc key of every key the service loaded ([`remember`]) and verifies with it. Everything
//! else stays jsonwebtoken's: the header, the algorithm pinning, the claims and their checks, the
//! other algorithms, and any key this provider has not seen, which its default provider builds
//! on the spot as before.

use std::{
    collections::VecDeque,
    sync::{Arc, LazyLock, RwLock},
};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use jsonwebtoken::{
    Algorithm, DecodingKey, DecodingKeyKind,
    crypto::{CryptoProvider, JwtVerifier, aws_lc},
};

/// At most this many parsed keys are kept, the newest: a service holds a few keys of each kind,
/// and a rotation adds one at a time.
const CAPACITY: usize = 64;

/// A public key parsed for RS256 (the padding and the 2048-8192 bit range jsonwebtoken's own
/// RS256 verifier uses), with the modulus and exponent it was parsed from.
struct ParsedKey {
    n: Vec<u8>,
    e: Vec<u8>,
    key: ParsedPublicKey,
}

impl ParsedKey {
    fn is(&self, n: &[u8], e: &[u8]) -> bool {
        self.n == n && self.e == e
    }
}

static PARSED: RwLock<VecDeque<Arc<ParsedKey>>> = RwLock::new(VecDeque::new());

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    verifier_factory,
    ..aws_lc::DEFAULT_PROVIDER.clone()
});

/// Makes this jsonwebtoken's provider for the process, and says whether it is: jsonwebtoken
/// fixes its provider at first use, so a process that verified a token before calling this keeps
/// the default one (slower, equally correct).
pub fn install() -> bool {
    match PROVIDER.install_default() {
        Ok(()) => true,
        Err(installed) => std::ptr::eq(installed, &*PROVIDER),
    }
}

/// Keeps the parsed form of an RSA public key (DER, PKCS#1) for verifying with `decoding`, the
/// same key as jsonwebtoken holds it. A key aws-lc refuses is not kept (verification then fails
/// the way jsonwebtoken's own would).
pub fn remember(decoding: &DecodingKey, public_der: &[u8]) {
    install();
    let DecodingKeyKind::RsaModulusExponent { n, e } = decoding.kind() else {
        return;
    };
    let Ok(key) = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_der) else {
        return;
    };
    // A poisoned lock only means a panic elsewhere during a push or a pop: the list is whole.
    let mut parsed = PARSED.write().unwrap_or_else(|e| e.into_inner());
    if parsed.iter().any(|p| p.is(n, e)) {
        return;
    }
    if parsed.len() == CAPACITY {
        parsed.pop_front();
    }
    parsed.push_back(Arc::new(ParsedKey {
        n: n.clone(),
        e: e.clone(),
        key,
    }));
}

/// The parsed key for jsonwebtoken's `key`, if [`remember`] kept it.
fn lookup(key: &DecodingKey) -> Option<Arc<ParsedKey>> {
    let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() else {
        return None;
    };
    PARSED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|p| p.is(n, e))
        .cloned()
}

fn verifier_factory(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    match (algorithm, lookup(key)) {
        (Algorithm::RS256, Some(parsed)) => Ok(Box::new(Rs256(parsed))),
        _ => (aws_lc::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    }
}

/// An RS256 verifier on a parsed key.
struct Rs256(Arc<ParsedKey>);

impl signature::Verifier<Vec<u8>> for Rs256 {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        self.0
            .key
            .verify_sig(message, signature)
            .map_err(signature::Error::from_source)
    }
}

impl JwtVerifier for Rs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{KeyKind, SigningKey, generate_pair};
    use aws_lc_rs::signature::KeyPair;
    use jsonwebtoken::{Header, Validation};
    use secrecy::ExposeSecret;

    fn key() -> SigningKey {
        let pair = generate_pair(2048).unwrap();
        SigningKey::from_pem(
            KeyKind::Access,
            pair.private_pem.expose_secret(),
            Some(&pair.public_pem),
        )
        .unwrap()
    }

    #[test]
    fn loaded_keys_verify_through_their_parsed_form_and_nothing_else_passes() {
        let (signer, other) = (key(), key());
        assert!(install(), "this provider is jsonwebtoken's");
        let parsed = lookup(&signer.decoding).expect("loading the key kept its parsed form");
        assert_eq!(
            parsed.key.as_ref(),
            signer.key_pair.public_key().as_ref(),
            "the parsed key is the signer's"
        );
        assert!(lookup(&other.decoding).is_some());

        let claims = serde_json::json!({"sub": "someone", "exp": 4_000_000_000_i64});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &signer.encoding)
            .unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        let decode = |token: &str, key: &SigningKey| {
            jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation)
        };
        assert_eq!(decode(&token, &signer).unwrap().claims, claims);
        // Another key's parsed form refuses the signature.
        assert!(decode(&token, &other).is_err());
        // So does the right key for a token whose payload was changed after signing.
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"someone else","exp":4000000000}"#);
        let err = decode(&parts.join("."), &signer).unwrap_err();
        assert_eq!(
            *err.kind(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature
        );
    }

    #[test]
    fn a_key_it_has_not_parsed_still_verifies_the_usual_way() {
        // Before jsonwebtoken's first use in this test, which would fix its default provider.
        assert!(install());
        let pair = generate_pair(2048).unwrap();
        let encoding =
            jsonwebtoken::EncodingKey::from_rsa_pem(pair.private_pem.expose_secret().as_bytes())
                .unwrap();
        let claims = serde_json::json!({"sub": "someone"});
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &encoding).unwrap();
        // Built from the public PEM, never through `remember`.
        let unparsed = DecodingKey::from_rsa_pem(pair.public_pem.as_bytes()).unwrap();
        assert!(lookup(&unparsed).is_none());
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<serde_json::Value>(&token, &unparsed, &validation);
        assert_eq!(decoded.unwrap().claims, claims);
    }
}
