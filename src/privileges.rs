//! Running with the least privilege: after the listeners are bound and the
//! keys loaded as root, `--user` gives root up for good (supplementary
//! groups, then group, then user, in that order, and verified); and root
//! refuses to deliver into a mail store that others could write to.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{self, Gid, Uid};

/// The account named by `--user`, resolved once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    pub fn lookup(name: &str) -> Result<Account, String> {
        match unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(Account {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            Ok(None) => Err(format!("no such user '{name}'")),
            Err(e) => Err(format!("looking up user '{name}': {e}")),
        }
    }
}

pub fn running_as_root() -> bool {
    unistd::geteuid().is_root()
}

/// Hands `path` (created by root before the switch) to the account, so it
/// can still write there afterwards.
pub fn give(path: &Path, account: &Account) -> Result<(), String> {
    unistd::chown(
        path,
        Some(Uid::from_raw(account.uid)),
        Some(Gid::from_raw(account.gid)),
    )
    .map_err(|e| format!("handing {} to {}: {e}", path.display(), account.name))
}

/// Drops root for `account` and checks that it cannot be regained.
pub fn drop_to(account: &Account) -> Result<(), String> {
    if !running_as_root() {
        return Err(format!(
            "--user {}: gsmtpd must be started as root to change user",
            account.name
        ));
    }
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    let fail = |what: &str, e: nix::Error| format!("--user {}: {what}: {e}", account.name);
    // Supplementary groups first: once the uid changes this is no longer
    // allowed, and root's groups must not survive the switch.
    unistd::setgroups(&[gid]).map_err(|e| fail("setgroups", e))?;
    unistd::setgid(gid).map_err(|e| fail("setgid", e))?;
    unistd::setuid(uid).map_err(|e| fail("setuid", e))?;
    let dropped = unistd::getuid() == uid
        && unistd::geteuid() == uid
        && unistd::getgid() == gid
        && unistd::getegid() == gid
        && unistd::setuid(Uid::from_raw(0)).is_err();
    if !dropped {
        return Err(format!(
            "--user {}: root privileges are still there after the switch",
            account.name
        ));
    }
    log::info!(
        "running as user {} (uid {}, gid {})",
        account.name,
        account.uid,
        account.gid
    );
    Ok(())
}

/// Root must not write where others can plant files or links.
pub fn check_store_safe_for_root(maildir: &Path) -> Result<(), String> {
    let mut dir = Some(maildir);
    while let Some(d) = dir {
        if let Ok(meta) = fs::metadata(d) {
            let mode = meta.permissions().mode();
            // World-writable without the sticky bit (so not /tmp) is dangerous.
            if mode & 0o002 != 0 && mode & 0o1000 == 0 || (mode & 0o020 != 0 && meta.gid() != 0) {
                return Err(format!(
                    "refusing to run as root: the mail store {} is writable by others via {} (mode {:o}); \
                     fix its permissions or use --user",
                    maildir.display(),
                    d.display(),
                    mode & 0o7777
                ));
            }
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn world_writable_store_is_refused_for_root_and_sticky_tmp_is_not() {
        let tmp = TempDir::new("priv");
        let dir = tmp.path().join("store");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_store_safe_for_root(&dir).is_ok());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_store_safe_for_root(&dir).unwrap_err();
        assert!(err.contains("writable by others"), "{err}");
        // Not created yet: its nearest existing ancestor decides.
        assert!(check_store_safe_for_root(&dir.join("mail/not/yet")).is_err());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_store_safe_for_root(&dir).is_ok(), "sticky like /tmp");
    }

    #[test]
    fn unknown_user_is_named() {
        assert!(
            Account::lookup("no-such-user-gsmtpd")
                .unwrap_err()
                .contains("no-such-user-gsmtpd")
        );
        assert_eq!(Account::lookup("root").unwrap().uid, 0);
    }
}
