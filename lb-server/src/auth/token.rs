//! Bearer tokens: their format, how they are made and kept, and the first
//! admin token.
//!
//! A token reads `lbt_<id>_<secret>`: a public id (16 hex digits) to find
//! its record, and a 256-bit secret (64 hex digits). The daemon keeps only
//! the SHA-256 of the secret, and compares digests in constant time; the
//! secret is printed once, when the token is made. This is the shape of
//! GitHub's and Stripe's API keys (a prefix that secret scanners know, an id,
//! a high-entropy secret), and since the secret has 256 bits of entropy an
//! unsalted fast hash is enough (NIST SP 800-63B §5.1.1.2 asks salting and
//! stretching only of human-chosen secrets).
//!
//! A token can instead bind a client certificate's identity (its SPIFFE URI
//! SAN, or its subject) to a grant: then there is no secret, and the
//! certificate authenticates (mTLS).

use std::path::{Path, PathBuf};

use lb_core::access::Grant;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// What every token starts with.
pub const PREFIX: &str = "lbt_";
/// Hex digits of a token's id.
const ID_HEX: usize = 16;
/// Longest stored id (a certificate binding's is `cert:` and its name).
pub const MAX_ID_LEN: usize = 5 + lb_core::access::MAX_NAME_LEN;
/// Hex digits of a token's secret.
const SECRET_HEX: usize = 64;

/// A token as the store keeps it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public id (16 hex digits), or `cert:<identity>` for a
    /// certificate binding.
    pub id: String,
    /// The operator's name for it (unique; `token revoke NAME`).
    pub name: String,
    /// What it may do.
    pub grant: Grant,
    /// SHA-256 of the secret (empty for a certificate binding).
    pub hash: Vec<u8>,
    /// The certificate identity it binds, if it binds one.
    pub identity: Option<String>,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl TokenRecord {
    /// Whether `secret` is this token's (constant time in the secret).
    pub fn verifies(&self, secret: &str) -> bool {
        !self.hash.is_empty() && bool::from(hash(secret).as_slice().ct_eq(&self.hash))
    }
}

/// A new token's text, and the record to keep of it.
pub fn mint(name: &str, grant: Grant, created_ms: u64) -> Result<(String, TokenRecord), String> {
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_HEX / 2];
    let mut secret = [0u8; SECRET_HEX / 2];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let (id, secret) = (hex(&id), hex(&secret));
    let text = format!("{PREFIX}{id}_{secret}");
    let record = TokenRecord {
        id,
        name: name.to_string(),
        grant,
        hash: hash(&secret),
        identity: None,
        created_ms,
    };
    Ok((text, record))
}

/// The id and secret of a presented token, if it has the token shape.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexy = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(id, ID_HEX) && hexy(secret, SECRET_HEX)).then_some((id, secret))
}

/// SHA-256 of `secret`.
pub fn hash(secret: &str) -> Vec<u8> {
    digest(&SHA256, secret.as_bytes()).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file in the data directory that holds the generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The path of the generated admin token under `data_dir`.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// Reads a token from a file (the first line, trimmed): what
/// `--admin-token-file` and `ctl --token-file` hold.
pub fn read_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "the token file {} holds no token of at least 16 characters",
            path.display()
        ));
    }
    Ok(token)
}

/// The data directory's admin token, made (mode 0600) if there is none yet.
/// Returns the token and whether it was made now.
pub fn admin_token(data_dir: &Path) -> Result<(String, bool), String> {
    let path = admin_token_path(data_dir);
    if path.exists() {
        return read_file(&path).map(|t| (t, false));
    }
    let (text, _) = mint("admin", Grant::admin(), 0)?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    write_private(&path, &format!("{text}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((text, true))
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_and_nothing_else_does() {
        let (text, rec) = mint("t", Grant::admin(), 1).unwrap();
        let (id, secret) = split(&text).expect("token shape");
        assert_eq!(id, rec.id);
        assert!(rec.verifies(secret));
        let mut wrong = secret.to_string();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        assert!(!rec.verifies(&wrong));
        assert!(!rec.verifies(""));
        assert_ne!(rec.hash, secret.as_bytes(), "the secret is not kept");
        let (other, _) = mint("t", Grant::admin(), 1).unwrap();
        assert_ne!(text, other);
    }

    #[test]
    fn only_the_token_shape_splits() {
        assert!(split("lbt_0123456789abcdef_").is_none());
        assert!(split("Bearer x").is_none());
        assert!(split(&format!("lbt_0123456789abcdeg_{}", "a".repeat(64))).is_none());
        assert!(split(&format!("lbt_0123456789abcdef_{}", "a".repeat(64))).is_some());
    }

    #[test]
    fn the_admin_token_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, made) = admin_token(dir.path()).unwrap();
        assert!(made);
        let (t2, made) = admin_token(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(t1, t2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(admin_token_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
