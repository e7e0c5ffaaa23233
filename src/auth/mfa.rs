//! The second factor's primitives (API.md section 9): TOTP codes (RFC 6238: SHA-1, 6 digits,
//! 30 s, one step of skew), the secrets sealed with AES-256-GCM under `MFA_ENCRYPTION_KEY`,
//! and recovery codes. The flows that use them are in `accounts::mfa`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use qrcode::{QrCode, render::svg};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use totp_rs::{Builder, Totp};
use uuid::Uuid;

/// Bytes of a new TOTP secret (160 bits, as RFC 4226 recommends).
const SECRET_BYTES: usize = 20;
/// Recovery codes per account.
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (80 bits), written in four groups of four.
const RECOVERY_CODE_CHARS: usize = 16;
/// Letters and digits that cannot be misread for one another.
const RECOVERY_ALPHABET: &[u8; 31] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// Why a second-factor operation failed inside this module.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error("MFA_ENCRYPTION_KEY must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("a sealed TOTP secret cannot be opened: {0}")]
    Unseal(&'static str),
    #[error("TOTP: {0}")]
    Totp(String),
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    bytes
}

/// A new random TOTP secret.
pub fn new_secret() -> Vec<u8> {
    random::<SECRET_BYTES>().to_vec()
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<Totp, MfaError> {
    // The otpauth label may not hold a colon; neither may the issuer.
    Builder::new()
        .with_secret(secret.to_vec())
        .with_issuer(Some(issuer.replace(':', " ")))
        .with_account_name(account.replace(':', " "))
        .build()
        .map_err(|err| MfaError::Totp(err.to_string()))
}

/// What an authenticator app needs to add the account.
pub struct Enrollment {
    /// The secret in base32, for typing in by hand.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

/// The secret as an authenticator app takes it: base32, an `otpauth://` URI and its QR code.
pub fn enrollment(secret: &[u8], issuer: &str, account: &str) -> Result<Enrollment, MfaError> {
    let totp = totp(secret, issuer, account)?;
    let uri = totp
        .to_url()
        .map_err(|err| MfaError::Totp(err.to_string()))?;
    let code = QrCode::new(uri.as_bytes()).map_err(|err| MfaError::Totp(err.to_string()))?;
    let qr_svg = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    Ok(Enrollment {
        secret: totp.secret().to_base32(),
        otpauth_uri: uri,
        qr_svg,
    })
}

/// The time step (Unix seconds / 30) whose code `code` is, within one step of `now`.
pub fn matching_step(secret: &[u8], code: &str, now: u64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "Latchkey", "user").ok()?;
    totp.check(code, now)
        .and_then(|step| i64::try_from(step).ok())
}

/// Whether `text` has the shape of a recovery code rather than a TOTP code.
pub fn looks_like_recovery_code(text: &str) -> bool {
    normalize_recovery_code(text).len() == RECOVERY_CODE_CHARS
}

fn normalize_recovery_code(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .take(RECOVERY_CODE_CHARS + 1)
        .collect()
}

/// Ten new recovery codes, as shown to the user once.
pub fn new_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let bytes = random::<RECOVERY_CODE_CHARS>();
            // 31 letters and digits; the modulo bias of 256 % 31 is far below guessing range.
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| RECOVERY_ALPHABET[usize::from(*b) % 31] as char)
                .collect();
            chars
                .chunks(4)
                .map(|group| group.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// What is stored of a recovery code: its SHA-256 (80 random bits are out of reach of a
/// brute force, so no slow hash is needed), of the code without dashes, spaces or case.
pub fn recovery_code_hash(code: &str) -> String {
    hex::encode(Sha256::digest(normalize_recovery_code(code).as_bytes()))
}

/// One AES-256-GCM key, named by the start of its SHA-256 so a sealed secret says which key
/// sealed it.
struct Key {
    id: String,
    key: RandomizedNonceKey,
}

impl Key {
    fn parse(base64: &SecretString) -> Result<Self, MfaError> {
        let bytes = STANDARD
            .decode(base64.expose_secret().trim())
            .map_err(|_| MfaError::BadKey)?;
        if bytes.len() != 32 {
            return Err(MfaError::BadKey);
        }
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes).map_err(|_| MfaError::BadKey)?;
        Ok(Self { id, key })
    }
}

/// Seals TOTP secrets with the current `MFA_ENCRYPTION_KEY`, and opens those sealed with it or
/// with `MFA_ENCRYPTION_KEY_PREVIOUS` (during a rotation). Each secret is bound to its user:
/// a sealed secret copied to another account does not open.
pub struct SecretBox {
    current: Key,
    previous: Option<Key>,
}

impl SecretBox {
    pub fn new(current: &SecretString, previous: Option<&SecretString>) -> Result<Self, MfaError> {
        Ok(Self {
            current: Key::parse(current)?,
            previous: previous.map(Key::parse).transpose()?,
        })
    }

    /// A new random key, base64-encoded (what `MFA_ENCRYPTION_KEY` holds).
    pub fn generate_key() -> SecretString {
        STANDARD.encode(random::<32>()).into()
    }

    /// `v1.<key id>.<base64url(nonce | ciphertext | tag)>`.
    pub fn seal(&self, user_id: Uuid, secret: &[u8]) -> String {
        let mut data = secret.to_vec();
        let aad = Aad::from(user_id.as_bytes());
        let nonce = self
            .current
            .key
            .seal_in_place_append_tag(aad, &mut data)
            .expect("AES-GCM sealing of a short secret");
        let mut out = nonce.as_ref().to_vec();
        out.extend_from_slice(&data);
        format!("v1.{}.{}", self.current.id, URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, user_id: Uuid, sealed: &str) -> Result<Vec<u8>, MfaError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(MfaError::Unseal("unknown format"));
        };
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or(MfaError::Unseal("sealed with a key that is not configured"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| MfaError::Unseal("not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(MfaError::Unseal("too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| MfaError::Unseal("bad nonce"))?;
        let mut data = ciphertext.to_vec();
        let aad = Aad::from(user_id.as_bytes());
        let plain = key
            .key
            .open_in_place(nonce, aad, &mut data)
            .map_err(|_| MfaError::Unseal("does not authenticate"))?;
        Ok(plain.to_vec())
    }

    /// Whether `sealed` was sealed with another key than the current one.
    pub fn is_stale(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) != Some(self.current.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_for_its_user_only_and_under_either_key() {
        let (old, new) = (SecretBox::generate_key(), SecretBox::generate_key());
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let before = SecretBox::new(&old, None).unwrap();
        let sealed = before.seal(alice, b"twenty bytes secret!");
        assert_eq!(
            before.open(alice, &sealed).unwrap(),
            b"twenty bytes secret!"
        );
        assert!(before.open(bob, &sealed).is_err(), "bound to its user");
        assert!(!sealed.contains("twenty"));

        let rotating = SecretBox::new(&new, Some(&old)).unwrap();
        assert!(rotating.is_stale(&sealed));
        assert_eq!(
            rotating.open(alice, &sealed).unwrap(),
            b"twenty bytes secret!"
        );
        let resealed = rotating.seal(alice, b"twenty bytes secret!");
        assert!(!rotating.is_stale(&resealed));
        let after = SecretBox::new(&new, None).unwrap();
        assert!(after.open(alice, &sealed).is_err(), "the old key is gone");
        assert!(after.open(alice, &resealed).is_ok());
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        for bad in ["", "not base64!", "c2hvcnQ="] {
            assert!(
                SecretBox::new(&bad.to_owned().into(), None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn recovery_codes_are_distinct_readable_and_hash_without_dashes_or_case() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for code in &codes {
            assert_eq!(code.len(), 19, "{code}");
            assert!(looks_like_recovery_code(code));
            let loose = code.replace('-', " ").to_uppercase();
            assert_eq!(recovery_code_hash(code), recovery_code_hash(&loose));
        }
        assert!(!looks_like_recovery_code("123456"));
    }

    #[test]
    fn the_enrollment_uri_names_the_issuer_and_account() {
        let secret = new_secret();
        let enrollment = enrollment(&secret, "Example: Auth", "ada@example.com").unwrap();
        assert!(enrollment.otpauth_uri.starts_with("otpauth://totp/"));
        assert!(enrollment.otpauth_uri.contains(&enrollment.secret));
        assert!(enrollment.qr_svg.contains("<svg"));
    }
}
