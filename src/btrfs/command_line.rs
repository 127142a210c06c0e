//! Splitting a command line such as `ssh backup@host btrfs receive /srv/x` into argv.
//!
//! The rules are the word-splitting and quote-removal subset of POSIX `sh`, and nothing more:
//! words are separated by unquoted blanks (space, tab, newline); `'…'` is literal; inside `"…"`
//! a backslash escapes only `$`, `` ` ``, `"`, `\` and newline; outside quotes a backslash escapes
//! the next character (backslash-newline is removed). There is no expansion of any kind (`$X`,
//! `~`, globs), no comments and no operators: `;`, `|`, `&&` are ordinary characters, because the
//! result is executed directly, never by a shell. A quoted empty string (`''`) is a word.

use std::fmt;

/// Why a command line could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandLineError {
    #[error("the command is empty")]
    Empty,
    #[error("unterminated {quote} quote in the command")]
    UnterminatedQuote { quote: &'static str },
    #[error("the command ends with a lone backslash")]
    TrailingBackslash,
}

/// Splits `line` into arguments with the rules in the module documentation.
pub fn split_command_line(line: &str) -> Result<Vec<String>, CommandLineError> {
    let mut words = Vec::new();
    // `None` between words; `Some` once a word has started, even if it is still empty (`''`).
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => {
                            return Err(CommandLineError::UnterminatedQuote { quote: "single" })
                        }
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('$' | '`' | '"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => {
                                return Err(CommandLineError::UnterminatedQuote { quote: "double" })
                            }
                        },
                        Some(c) => w.push(c),
                        None => {
                            return Err(CommandLineError::UnterminatedQuote { quote: "double" })
                        }
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(CommandLineError::TrailingBackslash),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err(CommandLineError::Empty);
    }
    Ok(words)
}

/// Shows argv the way a user would type it, quoting words that need it; for error messages.
pub(crate) struct DisplayArgv<'a>(pub &'a [String]);

impl fmt::Display for DisplayArgv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, word) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
            if plain {
                f.write_str(word)?;
            } else {
                write!(f, "'{}'", word.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
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
            split("a;b | c && $(d) ~ *"),
            ["a;b", "|", "c", "&&", "$(d)", "~", "*"]
        );
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert_eq!(split_command_line("   "), Err(CommandLineError::Empty));
        assert_eq!(
            split_command_line("ssh 'host"),
            Err(CommandLineError::UnterminatedQuote { quote: "single" })
        );
        assert_eq!(
            split_command_line(r#"ssh "host\""#),
            Err(CommandLineError::UnterminatedQuote { quote: "double" })
        );
        assert_eq!(
            split_command_line(r"ssh \"),
            Err(CommandLineError::TrailingBackslash)
        );
    }

    #[test]
    fn display_round_trips_through_the_splitter() {
        let argv: Vec<String> = ["ssh", "host", "it's", "", "a b", "/srv/x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let shown = DisplayArgv(&argv).to_string();
        assert_eq!(shown, r"ssh host 'it'\''s' '' 'a b' /srv/x");
        assert_eq!(split(&shown), argv);
    }
}
