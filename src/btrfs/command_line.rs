//! Splitting a command line such as `ssh backup@host btrfs receive /srv/x` into argv.
//!
//! The rules are POSIX `sh` word splitting and quote removal, as the `shlex` crate implements
//! them, and nothing more: `'…'` is literal, inside `"…"` a backslash escapes only `$`, `` ` ``,
//! `"`, `\` and newline, outside quotes it escapes the next character, and a word starting with
//! `#` begins a comment. There is no expansion (`$X`, `~`, globs) and no operators: `;`, `|`,
//! `&&` are ordinary characters, because the result is executed directly, never by a shell.

/// Why a command line could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandLineError {
    #[error("the command is empty")]
    Empty,
    #[error("the command has an unterminated quote or ends with a lone backslash")]
    Malformed,
}

/// Splits `line` into arguments with the rules in the module documentation.
pub fn split_command_line(line: &str) -> Result<Vec<String>, CommandLineError> {
    let words = shlex::split(line).ok_or(CommandLineError::Malformed)?;
    if words.is_empty() {
        return Err(CommandLineError::Empty);
    }
    Ok(words)
}

/// Shows argv the way a user would type it, quoting words that need it; for error messages.
pub(crate) fn display_argv(argv: &[String]) -> String {
    // try_join refuses only NUL bytes, which an argv cannot hold anyway.
    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<String> {
        split_command_line(line).expect("test input is well-formed")
    }

    #[test]
    fn blanks_separate_words_and_repeat_freely() {
        assert_eq!(
            split("  ssh\tbackup@host \n btrfs receive /srv/x  "),
            ["ssh", "backup@host", "btrfs", "receive", "/srv/x"]
        );
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(
            split(r#"echo 'a b\ "c" $HOME'"#),
            ["echo", r#"a b\ "c" $HOME"#]
        );
    }

    #[test]
    fn double_quotes_escape_only_the_posix_set() {
        assert_eq!(
            split(r#"echo "a \"b\" \\ \$x \n""#),
            ["echo", r#"a "b" \ $x \n"#]
        );
    }

    #[test]
    fn backslash_outside_quotes_escapes_the_next_character() {
        assert_eq!(split(r"a\ b c\\d e\'f"), [r"a b", r"c\d", "e'f"]);
        assert_eq!(split("a\\\nb"), ["ab"]);
    }

    #[test]
    fn quotes_join_adjacent_text_into_one_word() {
        assert_eq!(split(r#"--opt='x y'"z"w"#), ["--opt=x yzw"]);
    }

    #[test]
    fn quoted_empty_string_is_a_word() {
        assert_eq!(split(r#"cmd '' """#), ["cmd", "", ""]);
    }

    #[test]
    fn shell_operators_are_ordinary_text() {
        assert_eq!(
            split("a;b | c && $(d) ~ * x#y"),
            ["a;b", "|", "c", "&&", "$(d)", "~", "*", "x#y"]
        );
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert_eq!(split_command_line("   "), Err(CommandLineError::Empty));
        for bad in ["ssh 'host", r#"ssh "host\""#, r"ssh \"] {
            assert_eq!(
                split_command_line(bad),
                Err(CommandLineError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn display_round_trips_through_the_splitter() {
        let argv: Vec<String> = ["ssh", "host", "it's", "", "a b", "/srv/x", "#c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let shown = display_argv(&argv);
        assert!(shown.starts_with("ssh host "), "{shown}");
        assert_eq!(split(&shown), argv);
    }
}
