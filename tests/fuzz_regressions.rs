//! Runs the fuzz targets' logic (`gsmtpd::fuzz_support`) on every committed
//! seed (`fuzz/seeds/<target>/`) and every saved crash reproducer
//! (`fuzz/regressions/<target>/`), so CI checks them without a fuzzer.
//! Every file goes through every target: any input is valid for each.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use gsmtpd::fuzz_support;

const TARGETS: [&str; 3] = ["smtp_session", "tls_connection", "smtp_client"];

fn inputs() -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        for target in TARGETS {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("reading a fuzz input directory").path();
                if path.is_file() {
                    files.push(path);
                }
            }
        }
    }
    files.sort();
    assert!(
        files
            .iter()
            .any(|p| p.components().any(|c| c.as_os_str() == "seeds")),
        "no seeds found under {}",
        fuzz.display()
    );
    files
}

/// Runs every input, then fails naming each one that panicked.
fn run_all(target: fn(&[u8])) {
    let mut failed = Vec::new();
    for path in inputs() {
        let data = std::fs::read(&path).expect("reading a fuzz input");
        if panic::catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "failing inputs:\n{}", failed.join("\n"));
}

#[test]
fn smtp_session() {
    run_all(fuzz_support::smtp_session);
}

#[test]
fn tls_connection() {
    run_all(fuzz_support::tls_connection);
}

#[test]
fn smtp_client() {
    run_all(fuzz_support::smtp_client);
}
