//! RS256 verification on public keys parsed once, as jsonwebtoken's crypto provider.
//!
//! jsonwebtoken's aws-lc provider rebuilds the RSA public key from its modulus and exponent for
//! every token it verifies. Each [`SigningKey`](super::keys::SigningKey) instead holds its key
//! already parsed ([`ParsedKey`]), and [`verify_with`] lends it to the provider for the length
//! of one synchronous `decode` call. Everything else stays jsonwebtoken's: the header, the
//! algorithm pinning, the claims and their checks, and any other key, which its default
//! provider builds on the spot.

use std::{cell::RefCell, sync::Arc};

use aws_lc_rs::signature::{KeyPair, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair};
use jsonwebtoken::{
    Algorithm, DecodingKey, DecodingKeyKind,
    crypto::{CryptoProvider, JwtVerifier, aws_lc},
};

/// A public key parsed for RS256 (the padding and the 2048-8192 bit range jsonwebtoken's own
/// RS256 verifier uses), with the modulus and exponent jsonwebtoken knows it by.
#[derive(Clone)]
pub struct ParsedKey(Arc<Parsed>);

struct Parsed {
    n: Vec<u8>,
    e: Vec<u8>,
    key: ParsedPublicKey,
}

impl ParsedKey {
    /// The public half of `key_pair`, which `decoding` is jsonwebtoken's form of.
    pub fn new(key_pair: &RsaKeyPair, decoding: &DecodingKey) -> Result<Self, String> {
        let DecodingKeyKind::RsaModulusExponent { n, e } = decoding.kind() else {
            return Err("not an RSA public key".into());
        };
        let key = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key_pair.public_key().as_ref())
            .map_err(|err| err.to_string())?;
        Ok(Self(Arc::new(Parsed {
            n: n.clone(),
            e: e.clone(),
            key,
        })))
    }

    /// Whether this is the parsed form of jsonwebtoken's `key`.
    fn is(&self, key: &DecodingKey) -> bool {
        matches!(key.kind(), DecodingKeyKind::RsaModulusExponent { n, e } if *n == self.0.n && *e == self.0.e)
    }
}

thread_local! {
    /// The key lent to the provider by the `verify_with` running on this thread, if any.
    static LENT: RefCell<Option<ParsedKey>> = const { RefCell::new(None) };
}

static PROVIDER: std::sync::LazyLock<CryptoProvider> =
    std::sync::LazyLock::new(|| CryptoProvider {
        verifier_factory,
        ..aws_lc::DEFAULT_PROVIDER.clone()
    });

/// Makes this jsonwebtoken's provider for the process, and says whether it is: jsonwebtoken
/// fixes its provider at first use, so a process that verified a token before calling this
/// keeps the default one (slower, equally correct).
pub fn install() -> bool {
    match PROVIDER.install_default() {
        Ok(()) => true,
        Err(installed) => std::ptr::eq(installed, &*PROVIDER),
    }
}

/// Runs `decode` (one jsonwebtoken verification with `key`'s `DecodingKey`) with `key`'s parsed
/// form lent to the provider.
pub fn verify_with<R>(key: &ParsedKey, decode: impl FnOnce() -> R) -> R {
    /// Takes the loan back even if `decode` panics.
    struct Loan;
    impl Drop for Loan {
        fn drop(&mut self) {
            LENT.with(|lent| lent.borrow_mut().take());
        }
    }
    LENT.with(|lent| *lent.borrow_mut() = Some(key.clone()));
    let _loan = Loan;
    decode()
}

fn verifier_factory(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    let lent = LENT
        .with(|lent| lent.borrow().clone())
        .filter(|p| p.is(key));
    match (algorithm, lent) {
        (Algorithm::RS256, Some(parsed)) => Ok(Box::new(Rs256(parsed))),
        _ => (aws_lc::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    }
}

/// An RS256 verifier on a parsed key.
struct Rs256(ParsedKey);

impl signature::Verifier<Vec<u8>> for Rs256 {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        self.0
            .0
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
    fn a_lent_key_verifies_its_own_tokens_and_nothing_else_passes() {
        assert!(install(), "this provider is jsonwebtoken's");
        let (signer, other) = (key(), key());
        assert!(signer.verifier.is(&signer.decoding));
        assert!(!signer.verifier.is(&other.decoding));

        let claims = serde_json::json!({"sub": "someone", "exp": 4_000_000_000_i64});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &signer.encoding)
            .unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        let decode = |token: &str, key: &SigningKey| {
            verify_with(&key.verifier, || {
                jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation)
            })
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
        // The loan ends with the call: nothing is left lent on this thread.
        assert!(LENT.with(|lent| lent.borrow().is_none()));
    }

    #[test]
    fn a_key_not_lent_still_verifies_the_usual_way() {
        assert!(install());
        let signer = key();
        let claims = serde_json::json!({"sub": "someone"});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &signer.encoding)
            .unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        // Built from the public PEM and verified without a loan: the default provider's way.
        let decoded =
            jsonwebtoken::decode::<serde_json::Value>(&token, &signer.decoding, &validation);
        assert_eq!(decoded.unwrap().claims, claims);
    }
}
