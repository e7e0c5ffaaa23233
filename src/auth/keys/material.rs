//! One RSA key pair, parsed once: for signing (aws-lc's key pair), for jsonwebtoken (its
//! encoding and decoding keys) and for RS256 verification ([`rs256::ParsedKey`]).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey},
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey},
    traits::PublicKeyParts,
};
use sha2::{Digest, Sha256};

use super::{KeyError, KeyKind};
use crate::auth::rs256;

/// Keys shorter than this are refused everywhere (aws-lc cannot sign with them).
pub const MIN_BITS: usize = 2048;

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
    /// The private key parsed once for signing: jsonwebtoken's `encode` re-parses the DER on
    /// every signature.
    pub key_pair: aws_lc_rs::signature::RsaKeyPair,
    /// jsonwebtoken's form of the public key.
    pub decoding: DecodingKey,
    /// The public key parsed once for RS256 verification.
    pub verifier: rs256::ParsedKey,
    pub jwk: PublicJwk,
}

impl SigningKey {
    /// Builds the key from its private half, checking that `public_pem` (if given) matches it.
    pub fn from_pem(
        kind: KeyKind,
        private_pem: &str,
        public_pem: Option<&str>,
    ) -> Result<Self, KeyError> {
        let private =
            parse_private(private_pem).map_err(|reason| KeyError::BadPrivate { kind, reason })?;
        let public = RsaPublicKey::from(&private);
        let bits = public.size() * 8;
        // aws-lc, which signs and verifies, refuses RSA keys under 2048 bits: such a key could
        // not sign a single token, in any environment.
        if bits < MIN_BITS {
            return Err(KeyError::TooShort { kind, bits });
        }
        if let Some(public_pem) = public_pem {
            let given =
                parse_public(public_pem).map_err(|reason| KeyError::BadPublic { kind, reason })?;
            if given != public {
                return Err(KeyError::Mismatch { kind });
            }
        }
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let kid = thumbprint(&n, &e);
        let unusable = |reason: String| KeyError::Unusable { kind, reason };
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes())
            .map_err(|err| unusable(err.to_string()))?;
        let der = private
            .to_pkcs8_der()
            .map_err(|err| unusable(err.to_string()))?;
        let key_pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
            .map_err(|err| unusable(err.to_string()))?;
        let decoding =
            DecodingKey::from_rsa_components(&n, &e).map_err(|err| unusable(err.to_string()))?;
        let verifier = rs256::ParsedKey::new(&key_pair, &decoding).map_err(unusable)?;
        Ok(Self {
            bits,
            jwk: PublicJwk {
                kid: kid.clone(),
                n,
                e,
            },
            kid,
            encoding,
            key_pair,
            decoding,
            verifier,
        })
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
