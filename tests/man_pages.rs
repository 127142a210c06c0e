//! The man pages and shell completions both binaries generate for packaging
//! (`opdbus-chain generate-docs DIR`, `opdbus-blockchaind --generate-docs DIR`): each page
//! renders with man(1) without a warning and has its sections; each completion script loads in
//! its shell and completes a subcommand.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DAEMON: &str = env!("CARGO_BIN_EXE_opdbus-blockchaind");
const CLI: &str = env!("CARGO_BIN_EXE_opdbus-chain");

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"))
}

/// Both binaries' docs in one fresh directory, as scripts/install.sh makes them.
fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8 temp path");
    for out in [
        run(CLI, &["generate-docs", path]),
        run(DAEMON, &["--generate-docs", path]),
    ] {
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "generating docs: {out:?}"
        );
    }
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect();
    names.sort();
    names
}

/// The page as man(1) shows it, with its warnings (groff's `-ww`), as plain text.
fn man(page: &Path) -> (String, String) {
    let out = Command::new("man")
        .args(["--warnings=w", "-l", "-E", "UTF-8"])
        .arg(page)
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("MAN_KEEP_FORMATTING")
        .output()
        .expect("man(1) is installed by scripts/install-deps.sh (man-db)");
    assert!(out.status.success(), "man -l {}: {out:?}", page.display());
    // Bold and underline come as overstrikes (c BACKSPACE c) when not on a terminal.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    (text, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_man_page_renders_without_warnings_with_its_sections() {
    let dir = generated();
    let man1 = files_in(&dir.path().join("man1"));
    for page in [
        "opdbus-chain.1",
        "opdbus-chain-verify.1",
        "opdbus-chain-get.1",
        "opdbus-chain-backup.1",
        "opdbus-chain-prune.1",
        "opdbus-chain-snapshot.1",
        "opdbus-chain-completions.1",
        // Nested subcommands get pages of their own.
        "opdbus-chain-key-show.1",
        "opdbus-chain-tlog-rebuild.1",
    ] {
        assert!(
            man1.iter().any(|name| name == page),
            "no {page} in {man1:?}"
        );
    }
    // Neither clap's `help` nor the packaging command is a page.
    assert!(
        !man1
            .iter()
            .any(|name| name.contains("-help") || name.contains("generate-docs")),
        "{man1:?}"
    );
    assert_eq!(files_in(&dir.path().join("man8")), ["opdbus-blockchaind.8"]);

    let pages = man1
        .iter()
        .map(|name| dir.path().join("man1").join(name))
        .chain([dir.path().join("man8/opdbus-blockchaind.8")]);
    for page in pages {
        let (text, warnings) = man(&page);
        assert_eq!(warnings, "", "{} renders with warnings", page.display());
        let mut last = 0;
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "SEE ALSO",
            "VERSION",
        ] {
            let at = text
                .lines()
                .scan(0, |offset, line| {
                    let start = *offset;
                    *offset += line.len() + 1;
                    Some((start, line))
                })
                .find(|(_, line)| *line == section)
                .map(|(start, _)| start)
                .unwrap_or_else(|| panic!("{}: no {section} section:\n{text}", page.display()));
            assert!(at > last, "{}: {section} out of order", page.display());
            last = at;
        }
        assert!(text.contains("opdbus-blockchaind(8)") || text.contains("opdbus-chain(1)"));
    }

    let (top, _) = man(&dir.path().join("man1/opdbus-chain.1"));
    for expected in [
        "opdbus-chain-verify(1)",
        "journalctl(1)",
        "busctl(1)",
        "OPDBUS_BLOCKCHAIN_DIR",
        "OPDBUS_TLOG_DIR",
        "/var/lib/op-dbus/blockchain",
        "The command could not run",
    ] {
        assert!(
            top.contains(expected),
            "opdbus-chain(1) lacks {expected}:\n{top}"
        );
    }
    let (verify, _) = man(&dir.path().join("man1/opdbus-chain-verify.1"));
    assert!(verify.contains("--expect-head"), "{verify}");
    assert!(verify.contains("opdbus-chain(1)"), "{verify}");

    // Every config key the daemon's --help lists, in its page's ENVIRONMENT.
    let (daemon, _) = man(&dir.path().join("man8/opdbus-blockchaind.8"));
    let environment = &daemon[daemon.find("\nENVIRONMENT\n").expect("ENVIRONMENT")..];
    let help = String::from_utf8(run(DAEMON, &["--help"]).stdout).expect("utf-8");
    let keys: Vec<&str> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("OPDBUS_"))
        .filter_map(|rest| rest.split_once('=').map(|(key, _)| key))
        .filter(|key| key.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(keys.len() > 10, "{help}");
    for key in keys {
        assert!(
            environment.contains(&format!("OPDBUS_{key}")),
            "OPDBUS_{key} missing from opdbus-blockchaind(8)"
        );
    }
    for expected in ["FILES", "/etc/default/opdbus-blockchain", "opdbus-chain(1)"] {
        assert!(
            daemon.contains(expected),
            "opdbus-blockchaind(8) lacks {expected}"
        );
    }
}

/// What bash offers after `words` (the last one being completed), with the script loaded.
fn bash_completes(script: &Path, name: &str, words: &[&str]) -> Vec<String> {
    let words_list: Vec<String> = words.iter().map(|word| format!("'{word}'")).collect();
    let words_list = words_list.join(" ");
    let shell = format!(
        r#"source "$1" || exit 3
spec=$(complete -p {name}) || exit 4
function=${{spec##*-F }}; function=${{function%% *}}
COMP_WORDS=({words_list}); COMP_CWORD={cword}
"$function" {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        cword = words.len() - 1
    );
    let out = Command::new("bash")
        .args(["-c", &shell, "bash"])
        .arg(script)
        .output()
        .expect("bash");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn installed(shell: &str) -> bool {
    Command::new(shell)
        .args(["-c", "true"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn completions_load_in_their_shells_and_offer_the_subcommands() {
    let dir = generated();
    let completions = dir.path().join("completions");
    for (name, subcommand) in [
        ("opdbus-chain", "verify-backup"),
        ("opdbus-blockchaind", ""),
    ] {
        let bash = completions.join("bash").join(name);
        let zsh = completions.join("zsh").join(format!("_{name}"));
        let fish = completions.join("fish").join(format!("{name}.fish"));
        let out = run("bash", &["-n", bash.to_str().expect("utf-8")]);
        assert!(out.status.success(), "bash -n {}: {out:?}", bash.display());
        for (script, text) in
            [&bash, &zsh, &fish].map(|path| (path, std::fs::read_to_string(path).expect("script")))
        {
            assert!(!text.is_empty(), "{} is empty", script.display());
            // Offered to no one: the packaging and bench flags.
            assert!(
                !text.contains("generate-docs") && !text.contains("bench-without"),
                "{} offers a hidden command",
                script.display()
            );
            assert!(text.contains(subcommand), "{}", script.display());
        }
        for (shell, script) in [("zsh", &zsh), ("fish", &fish)] {
            if installed(shell) {
                let out = run(shell, &["-n", script.to_str().expect("utf-8")]);
                assert!(
                    out.status.success(),
                    "{shell} -n {}: {out:?}",
                    script.display()
                );
            } else {
                eprintln!(
                    "SKIPPED: {shell} is not installed, {} not parsed",
                    script.display()
                );
            }
        }
    }

    let bash = completions.join("bash/opdbus-chain");
    assert_eq!(
        bash_completes(&bash, "opdbus-chain", &["opdbus-chain", "verify"]),
        ["verify", "verify-backup"]
    );
    assert_eq!(
        bash_completes(&bash, "opdbus-chain", &["opdbus-chain", "tlog", ""]),
        ["-h", "-V", "--help", "--version", "rebuild", "help"]
    );
    // A subcommand's options (clap-rs/clap#6421 broke these for hyphenated programs).
    assert_eq!(
        bash_completes(&bash, "opdbus-chain", &["opdbus-chain", "prune", "--d"]),
        ["--daily", "--dry-run"]
    );
    let daemon = completions.join("bash/opdbus-blockchaind");
    assert!(bash_completes(
        &daemon,
        "opdbus-blockchaind",
        &["opdbus-blockchaind", "--ch"]
    )
    .contains(&"--chain-dir".to_owned()));
    if installed("fish") {
        let fish = completions.join("fish/opdbus-chain.fish");
        let out = run(
            "fish",
            &[
                "-c",
                "source $argv[1]; complete -C 'opdbus-chain verify-b'",
                fish.to_str().expect("utf-8"),
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("verify-backup\t"), "{out:?}");
    }
}

/// `opdbus-chain completions SHELL` prints what generate-docs installs.
#[test]
fn completions_command_prints_the_installed_script() {
    let dir = generated();
    for (shell, file) in [
        ("bash", "bash/opdbus-chain"),
        ("zsh", "zsh/_opdbus-chain"),
        ("fish", "fish/opdbus-chain.fish"),
    ] {
        let out = run(CLI, &["completions", shell]);
        assert!(out.status.success(), "{out:?}");
        let installed: PathBuf = dir.path().join("completions").join(file);
        assert_eq!(
            out.stdout,
            std::fs::read(&installed).expect("generated"),
            "completions {shell}"
        );
    }
    let out = run(CLI, &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
