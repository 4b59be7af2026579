//! Text from outside (dataset ids, operator notes, a teacher's words) made safe to print on a
//! terminal: control characters and bidirectional overrides could otherwise rewrite what an
//! operator sees (clear the line, fake a row, recolour, reorder).

use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1, newlines included) and every bidirectional
/// override or isolate written as a `\u{..}` escape; printable text is unchanged.
pub fn terminal_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_escaped_and_text_is_not() {
        assert_eq!(terminal_safe("ml-1m Café «Heat»"), "ml-1m Café «Heat»");
        assert!(matches!(terminal_safe("plain"), Cow::Borrowed(_)));
        assert_eq!(terminal_safe("a\u{1b}[2Kb"), "a\\u{1b}[2Kb");
        assert_eq!(terminal_safe("x\r\ny\u{7f}\u{9b}"), "x\\u{d}\\u{a}y\\u{7f}\\u{9b}");
        assert_eq!(terminal_safe("\u{202e}cod.exe"), "\\u{202e}cod.exe");
    }
}
