//! Man pages and shell completions, generated from a binary's clap definition so that they say
//! what `--help` says. Shared by both binaries (opdbus-blockchaind includes this file): each
//! gives its command and the facts clap does not know (exit status, files, related pages).
//!
//! Layout under the output directory, as scripts/install.sh and the .deb install it:
//! `man<S>/<name>.<S>` plus one page per visible subcommand (`<name>-<sub>.<S>`, nested ones
//! too), `completions/bash/<name>`, `completions/zsh/_<name>`, `completions/fish/<name>.fish`.

use clap::Command;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use std::io::Write;
use std::path::Path;

/// What the pages say beyond the clap definition.
pub struct Pages<'a> {
    /// The manual section: 1 for commands, 8 for the daemon.
    pub section: &'a str,
    /// Exit codes and their meaning, for EXIT STATUS.
    pub exit_status: &'a [(&'a str, &'a str)],
    /// Variables not declared on an argument (the daemon's config keys); those declared with
    /// `env` on an argument are listed too.
    pub environment: Vec<(String, String)>,
    /// Paths and what they hold, for FILES.
    pub files: &'a [(&'a str, &'a str)],
    /// Related pages, as `name(section)`.
    pub see_also: &'a [&'a str],
}

/// Writes the man pages and the completions of `cmd` under `dir`; the error names the file.
pub fn generate(cmd: Command, pages: &Pages<'_>, dir: &Path) -> Result<(), String> {
    let name = cmd.get_name().to_owned();
    for (shell, file_name) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut script = Vec::new();
        completion(&mut cmd.clone(), shell, &mut script)
            .map_err(|err| format!("generating the {shell} completions: {err}"))?;
        write(
            &dir.join("completions").join(shell.to_string()),
            &file_name,
            &script,
        )?;
    }
    // Each subcommand has its page: `help` needs none.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let top = format!("{name}({})", pages.section);
    write_pages(
        &cmd,
        pages,
        &dir.join(format!("man{}", pages.section)),
        &top,
    )
}

/// Writes the completion script of `cmd` for `shell` to `out`.
pub fn completion(cmd: &mut Command, shell: Shell, out: &mut dyn Write) -> std::io::Result<()> {
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, name.as_str(), &mut script);
    if shell == Shell::Bash && name.contains('-') {
        // clap_complete 4.6 spells the state of a subcommand of a hyphenated program two ways
        // (`opdbus__chain__subcmd__log` where it is set, `opdbus__subcmd__chain__subcmd__log`
        // in the case arms: clap-rs/clap#6421), so nothing after a subcommand would complete.
        // Once clap spells it one way, the broken spelling is no longer there to replace.
        let broken = name.replace('-', "__subcmd__");
        let fixed = name.replace('-', "__");
        script = String::from_utf8_lossy(&script)
            .replace(&broken, &fixed)
            .into_bytes();
    }
    out.write_all(&script)
}

/// The page of `cmd` and those of its visible subcommands, each naming the top page in SEE
/// ALSO (but not itself).
fn write_pages(cmd: &Command, pages: &Pages<'_>, man_dir: &Path, top: &str) -> Result<(), String> {
    let man = Man::new(cmd.clone())
        .section(pages.section)
        .manual("op-dbus")
        .title(page_name(cmd).to_uppercase());
    let mut text = Vec::new();
    render(&man, cmd, pages, top, &mut text)
        .map_err(|err| format!("rendering {}: {err}", man.get_filename()))?;
    write(man_dir, &man.get_filename(), &text)?;
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, pages, man_dir, top)?;
    }
    Ok(())
}

fn page_name(cmd: &Command) -> &str {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
}

/// One page: clap_mangen's sections, then EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO in place
/// of its EXTRA (the after-help text, which holds the same facts written for a terminal).
fn render(
    man: &Man,
    cmd: &Command,
    pages: &Pages<'_>,
    top: &str,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|sub| !sub.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in pages.exit_status {
        roff.control("TP", [])
            .text([bold(*code)])
            .text([roman(*meaning)]);
    }
    let environment = environment(cmd, &pages.environment);
    if !environment.is_empty() {
        roff.control("SH", ["ENVIRONMENT"]);
        for (name, help) in environment {
            roff.control("TP", [])
                .text([bold(name)])
                .text([roman(help)]);
        }
    }
    if !pages.files.is_empty() {
        roff.control("SH", ["FILES"]);
        for (path, what) in pages.files {
            roff.control("TP", [])
                .text([bold(*path)])
                .text([roman(*what)]);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    let this = format!("{}({})", page_name(cmd), pages.section);
    let related: Vec<&str> = std::iter::once(top)
        .chain(pages.see_also.iter().copied())
        .filter(|page| *page != this)
        .collect();
    roff.text([roman(related.join(", "))]);
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// The variables `cmd` and its subcommands read through an argument, after `given`; each
/// named once.
fn environment(cmd: &Command, given: &[(String, String)]) -> Vec<(String, String)> {
    let mut all = given.to_vec();
    let mut commands = vec![cmd];
    while let Some(cmd) = commands.pop() {
        for arg in cmd.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let Some(name) = arg.get_env().and_then(|name| name.to_str()) else {
                continue;
            };
            if !all.iter().any(|(known, _)| known == name) {
                let help = arg
                    .get_help()
                    .map_or_else(String::new, |help| help.to_string());
                all.push((name.to_owned(), help));
            }
        }
        commands.extend(cmd.get_subcommands().filter(|sub| !sub.is_hide_set()));
    }
    all
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, bytes))
        .map_err(|err| format!("writing {}: {err}", path.display()))
}
