//! --user: root is given up after the listeners are bound and the keys
//! loaded; and root refuses a mail store others can write to.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

const USER: &str = "gsmtpd-test";

fn ensure_user() -> (u32, u32) {
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .unwrap();
        assert!(made.success(), "useradd {USER} (the tests run as root)");
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, USER]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn status_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn user_flag_drops_every_root_id_and_delivers_as_that_user() {
    let (uid, gid) = ensure_user();
    // The write-ahead logs outside the state directory, where only root
    // could make their directory.
    let wal = scratch_dir("wal-elsewhere").join("wal");
    let server = Server::with_args(&["--user", USER, "--wal-dir", wal.to_str().unwrap()]);
    let pid = server.child.id();
    assert_eq!(
        status_ids(pid, "Uid:"),
        [uid; 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(status_ids(pid, "Gid:"), [gid; 4]);
    assert_eq!(
        status_ids(pid, "Groups:"),
        [gid],
        "no supplementary groups left from root"
    );
    server.wait_log(&format!("running as user {USER}"));
    // Forked after the switch: no worker, nor the delivery process, ever
    // held root.
    let children = children(server.child.id());
    assert_eq!(children.len(), server.workers().len() + 1);
    for worker in children {
        assert_eq!(status_ids(worker, "Uid:"), [uid; 4], "worker {worker}");
        assert_eq!(status_ids(worker, "Gid:"), [gid; 4], "worker {worker}");
    }

    let mut c = starttls_client(&server, &[]);
    send_message(
        &mut c,
        "a@client.test",
        &["una@example.org"],
        "Subject: as user\n\nhi\n",
    );
    c.command("QUIT", "221");
    c.finish();
    let new = server.maildir.join(DOMAIN).join("una").join("new");
    let file = fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    assert_eq!(fs::metadata(&file).unwrap().uid(), uid);
    assert_eq!(
        fs::metadata(server.state.join("sessions.sqlite"))
            .unwrap()
            .uid(),
        uid
    );
    for log in ["worker-0", "delivery"] {
        assert_eq!(fs::metadata(wal.join(log)).unwrap().uid(), uid, "{log}");
    }
}

#[test]
fn root_refuses_a_mail_store_writable_by_others() {
    let state = scratch_dir("unsafe");
    let maildir = state.join("mail");
    fs::create_dir_all(&maildir).unwrap();
    fs::set_permissions(&maildir, fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to run as root") && err.contains("writable by others"),
        "{err}"
    );
}

#[test]
fn unknown_user_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
        .args(["--user", "no-such-user-gsmtpd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user: no such user"));
}
