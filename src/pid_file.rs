//! `STATE_DIR/gsmtpd.pid`: the supervisor's pid, under an exclusive
//! `flock` for as long as it runs. A second gsmtpd on the same state
//! directory (which would share its queue and session cache) refuses to
//! start; `gsmtpd queue flush` finds the running server through it. A file
//! left by a server that was killed is not locked, so it is taken over.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Pid;

const NAME: &str = "gsmtpd.pid";

pub struct PidFile {
    path: PathBuf,
    /// Holding it holds the lock.
    _lock: Flock<File>,
}

impl PidFile {
    /// Takes the lock and writes our pid; fails when another process holds
    /// it.
    pub fn acquire(state_dir: &Path) -> Result<PidFile, String> {
        let path = state_dir.join(NAME);
        let named =
            |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| named("opening", &e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let other = read_pid(&mut file).map_or("?".to_string(), |p| p.to_string());
                return Err(format!(
                    "another gsmtpd (pid {other}) runs on the state directory {}",
                    state_dir.display()
                ));
            }
        };
        let write = |f: &mut File| -> io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())
        };
        write(&mut lock).map_err(|e| named("writing", &e))?;
        Ok(PidFile { path, _lock: lock })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Still locked: nobody else can have taken the file over.
        let _ = fs::remove_file(&self.path);
    }
}

/// The pid of the gsmtpd running on `state_dir`, if one is.
pub fn running(state_dir: &Path) -> Option<Pid> {
    let file = File::open(state_dir.join(NAME)).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // We could lock it: nobody holds it, nobody runs.
        Ok(_) => None,
        Err((mut file, _)) => read_pid(&mut file),
    }
}

fn read_pid(file: &mut File) -> Option<Pid> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().map(Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn one_holder_at_a_time_and_the_file_names_it() {
        let dir = TempDir::new("pid");
        assert_eq!(running(dir.path()), None);
        let held = PidFile::acquire(dir.path()).unwrap();
        assert_eq!(
            running(dir.path()),
            Some(Pid::from_raw(std::process::id() as i32))
        );
        let err = PidFile::acquire(dir.path()).err().unwrap();
        assert!(err.contains("another gsmtpd"), "{err}");
        drop(held);
        assert!(!dir.path().join(NAME).exists());
        // A stale file (its holder was killed) is taken over.
        fs::write(dir.path().join(NAME), "999999\n").unwrap();
        assert_eq!(running(dir.path()), None);
        let _again = PidFile::acquire(dir.path()).unwrap();
    }
}
