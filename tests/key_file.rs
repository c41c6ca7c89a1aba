//! Several hosts behind one MX name share ticket masters through
//! `--ticket-key-file`, rotated by `gsmtpd ticket-key rotate FILE` on one
//! host and copied to the others (nginx's and HAProxy's convention).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn rotate(file: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
        .args(["ticket-key", "rotate", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn server_with(file: &Path) -> Server {
    Server::with(Options {
        extra: vec![
            "--ticket-key-file".into(),
            file.display().to_string(),
            "--workers".into(),
            "2".into(),
        ],
        ..Options::default()
    })
}

fn s_client(server: &Server, version: &str, sess: (&str, &Path)) -> bool {
    s_client_resumed(server.tls_port(), version, sess.0, sess.1)
}

#[test]
fn two_servers_sharing_a_key_file_resume_each_others_tickets_across_a_rotation() {
    let dir = scratch_dir("keyfile");
    let file = dir.join("ticket-keys");
    let report = rotate(&file);
    assert!(report.contains("added ticket key "), "{report}");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let a = server_with(&file);
    let b = server_with(&file);
    for version in ["-tls1_3", "-tls1_2"] {
        let before = dir.join(format!("before{version}.pem"));
        assert!(!s_client(&a, version, ("-sess_out", &before)));
        assert!(
            s_client(&b, version, ("-sess_in", &before)),
            "{version}: A's ticket does not resume on B:\n{}",
            b.log()
        );
    }

    // The operator rotates; both servers re-read the file by themselves.
    rotate(&file);
    for server in [&a, &b] {
        let start = std::time::Instant::now();
        while server.log().matches("added: issues new tickets").count() < 2 {
            assert!(start.elapsed() < WAIT, "never re-read:\n{}", server.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server.wait_log("retired: decrypts its tickets until they expire");
    }
    for version in ["-tls1_3", "-tls1_2"] {
        // Tickets of the retired key still resume, on either server.
        let before = dir.join(format!("before{version}.pem"));
        assert!(
            s_client(&a, version, ("-sess_in", &before)),
            "{version}: an old ticket is lost on A after the rotation"
        );
        // New tickets, from the new key, resume across too.
        let after = dir.join(format!("after{version}.pem"));
        assert!(!s_client(&b, version, ("-sess_out", &after)));
        assert!(
            s_client(&a, version, ("-sess_in", &after)),
            "{version}: B's new ticket does not resume on A"
        );
    }
}

#[test]
fn a_key_file_others_can_read_stops_the_start() {
    let dir = scratch_dir("keyfile-mode");
    let file = dir.join("ticket-keys");
    rotate(&file);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
        .args(["--listen", "127.0.0.1:0", "--ticket-key-file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&file.display().to_string()) && err.contains("0644"),
        "{err}"
    );
    // A bad replacement at run time keeps the keys (and says so).
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let server = server_with(&file);
    fs::write(&file, "not a key\n").unwrap();
    server.wait_log("keeping the previous ticket keys");
    let sess = dir.join("s.pem");
    s_client(&server, "-tls1_3", ("-sess_out", &sess));
    assert!(s_client(&server, "-tls1_3", ("-sess_in", &sess)));
}
