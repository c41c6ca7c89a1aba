//! The embedded default: with no --cert, gsmtpd makes a self-signed
//! certificate for its host name in the state directory on first start and
//! reuses it afterwards, making a new one only when it no longer fits (host
//! name changed, or fewer than 30 days left).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::CertPair;
use crate::tls::x509;

const CERT_FILE: &str = "default-cert.pem";
const KEY_FILE: &str = "default-key.pem";
const VALID_DAYS: u32 = 365;
const RENEW_MARGIN_SECS: i64 = 30 * 86_400;

/// Returns the paths of a usable default certificate and key, making them
/// if needed.
pub fn ensure(state_dir: &Path, hostname: &str) -> Result<CertPair, String> {
    create_private_dir(state_dir)
        .map_err(|e| format!("creating state directory {}: {e}", state_dir.display()))?;
    let pair = CertPair {
        cert: state_dir.join(CERT_FILE),
        key: state_dir.join(KEY_FILE),
        ocsp: None,
    };
    let now = unix_now();
    if reusable(&pair, hostname, now) {
        return Ok(pair);
    }
    let made = x509::self_signed(hostname, now, VALID_DAYS)
        .map_err(|e| format!("making a certificate: {e}"))?;
    // Key first: a crash between the two writes then leaves a certificate
    // that does not match its key, which the next start replaces.
    write_atomically(&pair.key, &made.key, 0o600)
        .map_err(|e| format!("writing {}: {e}", pair.key.display()))?;
    write_atomically(&pair.cert, &made.certificate, 0o644)
        .map_err(|e| format!("writing {}: {e}", pair.cert.display()))?;
    log::info!(
        "generated a self-signed certificate for {hostname} in {} (valid {VALID_DAYS} days)",
        state_dir.display()
    );
    Ok(pair)
}

/// The files `ensure` writes, so that a change of user can take them over.
pub fn files(state_dir: &Path) -> [PathBuf; 2] {
    [state_dir.join(CERT_FILE), state_dir.join(KEY_FILE)]
}

fn reusable(pair: &CertPair, hostname: &str, now: i64) -> bool {
    if !pair.key.is_file() {
        return false;
    }
    match fs::read(&pair.cert) {
        Ok(pem) => x509::still_fits(&pem, hostname, now, RENEW_MARGIN_SECS).unwrap_or(false),
        Err(_) => false,
    }
}

pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old file
/// or the whole new one, never a part, with `mode` from the start.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_name(path);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn unix_now() -> i64 {
    crate::clock::unix_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_reused_and_remade_for_another_name() {
        crate::tls::init().unwrap();
        let tmp = TempDir::new("cert");
        // Not yet there: ensure() must create it with mode 0700.
        let dir = tmp.path().join("state");
        let first = ensure(&dir, "mx.example.org").unwrap();
        let key_mode = fs::metadata(&first.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(key_mode, 0o600);
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let pem = fs::read(&first.cert).unwrap();
        assert!(x509::still_fits(&pem, "mx.example.org", unix_now(), RENEW_MARGIN_SECS).unwrap());
        assert!(!x509::still_fits(&pem, "other.example.org", unix_now(), 0).unwrap());
        // Expired a year from now.
        assert!(!x509::still_fits(&pem, "mx.example.org", unix_now() + 366 * 86_400, 0).unwrap());

        ensure(&dir, "mx.example.org").unwrap();
        assert_eq!(fs::read(&first.cert).unwrap(), pem, "reused");

        ensure(&dir, "other.example.org").unwrap();
        assert_ne!(
            fs::read(&first.cert).unwrap(),
            pem,
            "remade for the new name"
        );
    }
}
