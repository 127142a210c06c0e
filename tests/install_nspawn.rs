//! Installing and upgrading as an admin does, under a real systemd: each test boots a fresh
//! Debian 12 container (tests/nspawn) with nothing of ours in it, then installs this build with
//! the .deb that scripts/build-deb.sh makes of it or with scripts/install.sh, and checks what
//! the admin sees: the unit running, the files in place, the bus without complaints, and an
//! upgrade that restarts the daemon on the new binary and continues the chain.
//!
//! Root only, as tests/systemd_nspawn.rs (which says how the rootfs is built and cached).

mod common;
mod nspawn;

use nspawn::*;

use common::DAEMON;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const INSTALL_SH: &str = "/opt/opdbus/src/scripts/install.sh";

/// Files every install puts in place, whichever way (the man pages and completions of both
/// binaries among them).
const INSTALLED: &[&str] = &[
    "/usr/bin/opdbus-blockchaind",
    "/usr/bin/opdbus-chain",
    "/usr/lib/systemd/system/opdbus-blockchaind.service",
    "/usr/share/dbus-1/system.d/org.opdbus.Blockchain.conf",
    "/usr/share/dbus-1/system-services/org.opdbus.Blockchain.service",
    "/usr/share/dbus-1/interfaces/org.opdbus.Blockchain.xml",
    "/usr/lib/systemd/catalog/opdbus-blockchain.catalog",
    "/usr/share/doc/opdbus-blockchain/README.md",
    "/usr/share/doc/opdbus-blockchain/operations.md",
    "/usr/share/man/man8/opdbus-blockchaind.8.gz",
    "/usr/share/man/man1/opdbus-chain.1.gz",
    "/usr/share/bash-completion/completions/opdbus-chain",
    "/usr/share/bash-completion/completions/opdbus-blockchaind",
    "/usr/share/zsh/vendor-completions/_opdbus-chain",
    "/usr/share/zsh/vendor-completions/_opdbus-blockchaind",
    "/usr/share/fish/vendor_completions.d/opdbus-chain.fish",
    "/usr/share/fish/vendor_completions.d/opdbus-blockchaind.fish",
    "/etc/default/opdbus-blockchain",
];

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn install_sh_help_prints_usage_and_exits_0() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    for flag in ["--help", "-h", "help"] {
        let out = Command::new(&script)
            .arg(flag)
            .output()
            .expect("install.sh");
        assert!(out.status.success(), "{flag}: {}", stderr(&out));
        let text = stdout(&out);
        for part in [
            "SYNOPSIS",
            "uninstall [--purge]",
            "--bin-dir DIR",
            "DESTDIR",
            "/usr/share/man/man8/opdbus-blockchaind",
            "EXIT STATUS",
        ] {
            assert!(text.contains(part), "{flag}: no '{part}' in:\n{text}");
        }
    }
    let out = Command::new(&script)
        .arg("--no-such-option")
        .env("DESTDIR", "/nonexistent")
        .output()
        .expect("install.sh");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--no-such-option"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn real_systemd_deb_installs_starts_and_purges_cleanly() {
    let Some(ct) = Container::boot_without_service("deb") else {
        return;
    };
    let deb = copy_deb_into(&ct);
    ct.ok(&["apt-get", "install", "-y", &deb]);

    // A first install enables and starts the unit, as Debian does for its services.
    assert_eq!(ct.unit_property("ActiveState"), "active");
    assert_eq!(ct.unit_property("UnitFileState"), "enabled");
    let (height, _) = ct.add_footprint("network", "create", r#"{"interface":"eth0"}"#);
    assert_eq!(height, 1);
    for file in INSTALLED {
        assert!(ct.path(file).is_file(), "{file} is not installed");
    }
    // Documentation= points at files that are there.
    let documentation = ct.unit_property("Documentation");
    assert!(
        documentation.contains("man:opdbus-blockchaind(8)")
            && documentation.contains("file:///usr/share/doc/opdbus-blockchain/operations.md"),
        "{documentation}"
    );
    let catalog = ct.ok(&["journalctl", "--list-catalog", "--no-pager"]);
    for id in catalog_ids() {
        assert!(
            catalog.contains(&id),
            "{id} is not in the catalog:\n{catalog}"
        );
    }
    // The group came before the bus policy that names it.
    ct.ok(&["getent", "group", "opdbus"]);
    ct.ok(&["getent", "passwd", "opdbus-blockchain"]);
    assert_no_unknown_group(&ct);

    ct.ok(&["dpkg", "--purge", "opdbus-blockchain"]);
    for file in INSTALLED {
        assert!(!ct.path(file).exists(), "{file} is still there after purge");
    }
    assert_ne!(ct.unit_property("ActiveState"), "active");
    assert!(
        ct.path("/var/lib/op-dbus/blockchain").is_dir(),
        "purge removed the chain"
    );
}

#[test]
fn real_systemd_deb_over_itself_restarts_the_daemon_and_continues_the_chain() {
    let Some(ct) = Container::boot_without_service("debup") else {
        return;
    };
    let deb = copy_deb_into(&ct);
    ct.ok(&["dpkg", "-i", &deb]);
    for n in 1..=3 {
        assert_eq!(ct.add_footprint("network", "create", "{}").0, n);
    }
    let before = ct.unit_property("MainPID");

    let out = ct.ok(&["dpkg", "-i", &deb]);
    assert!(
        out.contains("restarted opdbus-blockchaind.service"),
        "{out}"
    );
    assert_upgraded(&ct, &before, 4);
    assert_no_unknown_group(&ct);
}

#[test]
fn real_systemd_install_sh_upgrade_restarts_the_daemon_and_continues_the_chain() {
    let Some(ct) = Container::boot_without_service("upgrade") else {
        return;
    };
    // The previous version: this build with a byte appended to the daemon, a different file
    // that runs the same.
    ct.ok(&[
        "sh",
        "-c",
        &format!(
            "mkdir /root/previous && cp {CT_BIN}/opdbus-blockchaind {CT_BIN}/opdbus-chain \
             /root/previous/ && echo >> /root/previous/opdbus-blockchaind"
        ),
    ]);
    ct.ok(&[
        INSTALL_SH,
        "install",
        "--bin-dir",
        "/root/previous",
        "--enable",
    ]);
    assert_no_unknown_group(&ct);
    for n in 1..=3 {
        assert_eq!(ct.add_footprint("network", "create", "{}").0, n);
    }
    let before = ct.unit_property("MainPID");

    let out = ct.ok(&[INSTALL_SH, "install", "--bin-dir", CT_BIN]);
    assert!(
        out.contains("installed /usr/bin/opdbus-blockchaind"),
        "{out}"
    );
    assert!(
        out.contains("restarted opdbus-blockchaind.service"),
        "{out}"
    );
    assert_upgraded(&ct, &before, 4);

    // The same build again changes nothing and leaves the daemon alone.
    let running = ct.unit_property("MainPID");
    let out = ct.ok(&[INSTALL_SH, "install", "--bin-dir", CT_BIN]);
    assert!(!out.contains("installed /usr/bin"), "{out}");
    assert!(out.contains("not restarted"), "{out}");
    assert_eq!(ct.unit_property("MainPID"), running);

    // A daemon left on a deleted binary (today's main's installer replaced an identical file
    // under it) is restarted although no file changes.
    ct.ok(&[
        "sh",
        "-c",
        "cp /usr/bin/opdbus-blockchaind /root/same && \
         install -m 0755 /root/same /usr/bin/opdbus-blockchaind",
    ]);
    let out = ct.ok(&[INSTALL_SH, "install", "--bin-dir", CT_BIN]);
    assert!(!out.contains("installed /usr/bin"), "{out}");
    assert!(
        out.contains("restarted opdbus-blockchaind.service"),
        "{out}"
    );
    assert_upgraded(&ct, &running, 5);
}

#[test]
fn real_systemd_install_sh_refuses_a_missing_library_and_installs_nothing() {
    let Some(ct) = Container::boot_without_service("nolib") else {
        return;
    };
    ct.ok(&[
        "sh",
        "-c",
        "mkdir /root/hidden && mv /usr/lib/*/libhwloc.so.15* /root/hidden/ && ldconfig",
    ]);
    let out = ct.run(&[INSTALL_SH, "install", "--bin-dir", CT_BIN]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let error = stderr(&out);
    assert_eq!(error.lines().count(), 1, "not one line: {error}");
    assert!(
        error.contains("libhwloc.so.15") && error.contains("libhwloc15"),
        "{error}"
    );
    for file in INSTALLED {
        assert!(!ct.path(file).exists(), "{file} was installed");
    }
    let group = ct.run(&["getent", "group", "opdbus"]);
    assert!(!group.status.success(), "the group was created");
    let user = ct.run(&["getent", "passwd", "opdbus-blockchain"]);
    assert!(!user.status.success(), "the user was created");
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The .deb of this build, made once per test run with scripts/build-deb.sh.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("install_nspawn-deb");
        let _ = std::fs::remove_dir_all(&out);
        let build = Path::new(DAEMON).parent().expect("the build directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-deb.sh");
        let built = Command::new(script)
            .arg("--bin-dir")
            .arg(build)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("scripts/build-deb.sh");
        assert!(
            built.status.success(),
            "build-deb.sh failed:\n{}{}",
            stdout(&built),
            stderr(&built)
        );
        PathBuf::from(stdout(&built).lines().last().expect("the .deb's path"))
    })
}

/// Copies the .deb into the container's /root; returns its path there.
fn copy_deb_into(ct: &Container) -> String {
    let deb = deb();
    let inside = format!(
        "/root/{}",
        deb.file_name().expect("a file name").to_string_lossy()
    );
    std::fs::copy(deb, ct.path(&inside)).expect("copy the .deb into the container");
    inside
}

/// The MESSAGE_IDs of our catalog file, as `journalctl --list-catalog` prints them.
fn catalog_ids() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/opdbus-blockchain.catalog");
    let text = std::fs::read_to_string(&path).expect("systemd/opdbus-blockchain.catalog");
    let ids: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("-- "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|id| id.replace('-', "").to_lowercase())
        .collect();
    assert!(!ids.is_empty(), "no MESSAGE_ID in {}", path.display());
    ids
}

fn assert_no_unknown_group(ct: &Container) {
    let journal = ct.ok(&["journalctl", "-b", "--no-pager"]);
    assert!(
        !journal.contains("Unknown group") && !journal.contains("Unknown user"),
        "the bus saw the policy before the user or group:\n{journal}"
    );
}

/// After an upgrade: a new daemon process runs the installed binary, and the chain goes on
/// from where it was (`next_height`) and verifies.
fn assert_upgraded(ct: &Container, pid_before: &str, next_height: u64) {
    assert_eq!(ct.unit_property("ActiveState"), "active");
    let pid = ct.unit_property("MainPID");
    assert_ne!(pid, pid_before, "the daemon was not restarted");
    let exe = ct.ok(&["readlink", &format!("/proc/{pid}/exe")]);
    assert_eq!(exe.trim(), "/usr/bin/opdbus-blockchaind");
    assert_eq!(
        ct.add_footprint("network", "delete", "{}").0,
        next_height,
        "the chain did not continue"
    );
    let verify = ct.ok(&["opdbus-chain", "verify"]);
    assert!(verify.starts_with("chain is intact"), "{verify}");
}
