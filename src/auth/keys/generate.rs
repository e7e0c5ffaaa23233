//! New key pairs, made with the `rsa` crate, and the files they are written to (private keys
//! mode 0600 from their first byte).

use std::{fs, io::Write, path::Path};

use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
};
use secrecy::{ExposeSecret, SecretString};

use super::{KeyError, KeyPaths, MANIFEST_FILE};

/// Size of generated keys unless asked otherwise.
pub const DEFAULT_BITS: usize = 2048;

/// A freshly generated key pair as PEM text (PKCS#8 private, SPKI public).
pub struct GeneratedPair {
    pub private_pem: SecretString,
    pub public_pem: String,
}

/// Generates an RSA key pair. Slow (hundreds of milliseconds): callers on the async runtime
/// run it on a blocking thread.
pub fn generate_pair(bits: usize) -> Result<GeneratedPair, KeyError> {
    let failed = |err: &dyn std::fmt::Display| KeyError::Generation(err.to_string());
    let private = RsaPrivateKey::new(&mut rand::thread_rng(), bits).map_err(|e| failed(&e))?;
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| failed(&e))?
        .to_string();
    let public_pem = RsaPublicKey::from(&private)
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| failed(&e))?;
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
) -> Result<(), KeyError> {
    if !force {
        for path in [private_path, public_path] {
            if path.exists() {
                let path = path.to_path_buf();
                return Err(KeyError::Exists { path });
            }
        }
    }
    if let Some(dir) = private_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let pair = generate_pair(bits)?;
    write_file(private_path, pair.private_pem.expose_secret(), 0o600)?;
    write_file(public_path, &pair.public_pem, 0o644)
}

/// Writes `contents` to `path` with permission bits `mode`, whether the file is new or not.
pub(super) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        // `mode` only applies when the file is created; --force must not keep looser bits.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    file.write_all(contents.as_bytes()).map_err(io)
}

/// Writes both pairs into `dir` with the default file names.
pub fn generate_key_dir(dir: &Path, bits: usize, force: bool) -> Result<KeyPaths, KeyError> {
    if dir.join(MANIFEST_FILE).exists() {
        // Replacing keys under a manifest would orphan its entries: rotation is the way there.
        return Err(KeyError::HasManifest {
            dir: dir.to_path_buf(),
        });
    }
    let paths = KeyPaths::in_dir(dir);
    generate_pair_files(&paths.access_private, &paths.access_public, bits, force)?;
    generate_pair_files(&paths.refresh_private, &paths.refresh_public, bits, force)?;
    Ok(paths)
}
