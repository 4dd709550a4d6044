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
/// CSI sequence (`ESC [ … final`) whole, an OSC string (`ESC ] … BEL` or
/// `… ESC \\`: titles, clipboard writes, hyperlinks) whole, any other escape
/// with the one character after it (such as the keypad modes `ESC =` and
/// `ESC >` that readline sends, which `console::strip_ansi_codes` would
/// leave).
pub(crate) fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Bytes from a guest as text that is safe to print anywhere: valid UTF-8
/// is kept as it is, except characters that act on a terminal or reorder
/// what is shown (C0 and C1 controls, DEL, the bidirectional overrides and
/// isolates), which are written `\u{1b}` with their code point in hex;
/// each byte that is not part of valid UTF-8 is written `\xff`. Newlines
/// and tabs stay. The same bytes always give the same text, so snapshots
/// stay stable.
pub(crate) fn inert(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if acts_on_a_terminal(c) {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn acts_on_a_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The last `n` lines of what a terminal showed (`bytes`: a console log,
/// or text read from a port), escape sequences removed and everything
/// else made [`inert`]: for error messages.
pub(crate) fn last_lines(bytes: &[u8], n: usize) -> String {
    // Escape sequences are found byte by byte (each byte one char), before
    // the bytes are decoded.
    let stripped: Vec<u8> =
        strip_escapes(&bytes.iter().map(|&b| char::from(b)).collect::<String>())
            .chars()
            .map(|c| c as u8)
            .collect();
    tail(&inert(&stripped), n)
}

/// The last `n` lines of `text`, as it is.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

    #[test]
    fn guest_bytes_are_made_inert() {
        assert_eq!(inert(b"plain\ttext\n"), "plain\ttext\n");
        assert_eq!(inert("é ✓\n".as_bytes()), "é ✓\n");
        assert_eq!(
            inert(b"\x1b]0;title\x07\x1b[31mred\r\x7f"),
            "\\u{1b}]0;title\\u{7}\\u{1b}[31mred\\u{d}\\u{7f}"
        );
        // C1 controls (here CSI, U+009B) and bidirectional overrides.
        assert_eq!(
            inert("a\u{9b}1m\u{202e}b".as_bytes()),
            "a\\u{9b}1m\\u{202e}b"
        );
        // Bytes that are not UTF-8, including a sequence cut short.
        assert_eq!(inert(b"\xff\xfe ok \xe2\x9c"), "\\xff\\xfe ok \\xe2\\x9c");
        // Every byte value, alone: nothing that reaches a terminal is
        // anything but printable text, newline or tab.
        for b in 0..=255u8 {
            let text = inert(&[b]);
            assert!(
                text.chars()
                    .all(|c| !acts_on_a_terminal(c) || c == '\n' || c == '\t'),
                "{b:#x} gave {text:?}"
            );
        }
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(inert(&noise)
            .chars()
            .all(|c| !acts_on_a_terminal(c) || c == '\n' || c == '\t'));
    }

    #[test]
    fn terminal_tails_lose_their_escapes_and_keep_the_rest_inert() {
        assert_eq!(
            last_lines(
                b"one\r\n\x1b]0;pwned\x07two \x1b[1mbold\x1b[0m\x07\n\xffthree",
                2
            ),
            "two bold\\u{7}\n\\xffthree"
        );
        assert_eq!(
            strip_escapes("a\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\b"),
            "alinkb"
        );
    }
}
