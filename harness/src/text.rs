//! Small pure helpers on text that every layer uses.

/// Quotes a string for a POSIX shell.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Lower-case hexadecimal digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` cut to at most `max` characters, with "…" where it was cut.
pub(crate) fn ellipsize(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// Terminal output without its escape sequences and carriage returns: a
/// CSI sequence (`ESC [ … final`) whole, any other escape with the one
/// character after it (such as the keypad modes `ESC =` and `ESC >` that
/// readline sends, which `console::strip_ansi_codes` would leave).
pub(crate) fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(hex(&[0, 171, 255]), "00abff");
        assert_eq!(ellipsize("abcdef", 3), "abc…");
        assert_eq!(ellipsize("äbc", 3), "äbc");
        assert_eq!(
            strip_escapes("\u{1b}[?2004h\u{1b}[1;32mok\u{1b}[0m\r\n"),
            "ok\n"
        );
        assert_eq!(strip_escapes("\u{1b}=$ \u{1b}>"), "$ ");
    }
}
