//! Output: text for people, one JSON document for scripts (`--json`).

use std::io::Write;

use hardkey_api::KeyInfo;
use serde_json::{Value, json};

static JSON_ON_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes that `--json` was given: stdout carries one JSON document and nothing else.
pub(crate) fn set_json_on_stdout() {
    JSON_ON_STDOUT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `--json` was given (see [`set_json_on_stdout`]).
pub(crate) fn json_on_stdout() -> bool {
    JSON_ON_STDOUT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where results go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    /// Print JSON instead of text.
    pub(crate) json: bool,
}

impl Output {
    /// Prints `value` as JSON with `--json`, else `text()`.
    pub(crate) fn emit(&self, value: Value, text: impl FnOnce() -> String) {
        let body = if self.json {
            format!("{value:#}")
        } else {
            printable_lines(&text()).into_owned()
        };
        write_stdout(&body);
    }

    /// Whether a progress indicator may draw (a terminal, no JSON).
    pub(crate) fn interactive(&self) -> bool {
        use std::io::IsTerminal;
        !self.json && std::io::stderr().is_terminal()
    }
}

/// Writes `text` (plus a newline when missing) to stdout; a closed pipe is not an error.
pub(crate) fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') && !text.is_empty() {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// A status line for people on stderr (kept out of stdout so output can be piped).
pub(crate) fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{}", printable_lines(text));
}

/// Text that came from a device, a file or the command line, made safe to show on a
/// terminal: control characters (C0 including newline and tab, DEL, C1) and the invisible
/// Unicode format characters that reorder or hide text (bidirectional overrides, zero-width
/// characters) are written as escapes (`\x1b`, `\u{202e}`), so a label holding an escape
/// sequence cannot clear the screen, retitle the terminal or disguise itself.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    escape(text, false)
}

/// A path as it may be shown in a message ([`printable`]).
pub(crate) fn shown(path: &std::path::Path) -> String {
    printable(&path.display().to_string()).into_owned()
}

/// An error line: everything escaped, newlines included (an error is one line, and a file
/// name holding a newline must not forge a second).
pub(crate) fn error_line(text: &str) {
    let _ = writeln!(std::io::stderr(), "{}", printable(text));
}

/// [`printable`], keeping newlines and tabs (for whole messages of several lines).
pub(crate) fn printable_lines(text: &str) -> std::borrow::Cow<'_, str> {
    escape(text, true)
}

fn needs_escape(c: char, keep_lines: bool) -> bool {
    if keep_lines && (c == '\n' || c == '\t') {
        return false;
    }
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}'
            | '\u{feff}' | '\u{061c}')
}

fn escape(text: &str, keep_lines: bool) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    if !text.chars().any(|c| needs_escape(c, keep_lines)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c, keep_lines) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The SHA-256 of the DER SubjectPublicKeyInfo, hex: how `openssl pkey -pubin -outform der |
/// sha256sum` names a public key.
pub(crate) fn fingerprint(info: &KeyInfo) -> String {
    info.public_key.fingerprint()
}

/// A key as JSON.
pub(crate) fn key_json(info: &KeyInfo) -> Value {
    json!({
        "uri": info.uri.as_ref().map(ToString::to_string),
        "label": info.label,
        "id": info.id.to_string(),
        "algorithm": info.algorithm.name(),
        "usages": info.usages.to_string(),
        "signature_schemes": info.signature_schemes.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "decrypt_schemes": info.decrypt_schemes.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "public_key_sha256": fingerprint(info),
        "public_key_pem": info.public_key.to_pem(),
        "device": info.device.as_ref().map(|d| json!({
            "operations": d.operations,
            "mechanisms": d.mechanisms,
            "note": d.note,
        })),
    })
}

/// A key for people, one field per line.
pub(crate) fn key_text(info: &KeyInfo) -> String {
    let schemes = |v: Vec<&str>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let device = info.device.as_ref().map_or_else(String::new, |d| {
        let mut text = format!(
            "\non device:    {}\nmechanisms:   {}",
            if d.operations.is_empty() {
                "-".to_owned()
            } else {
                d.operations.join(", ")
            },
            d.mechanisms
                .as_ref()
                .map_or_else(|| "not restricted".to_owned(), |m| m.join(", ")),
        );
        if let Some(note) = &d.note {
            text.push_str("\nnote:         ");
            text.push_str(note);
        }
        text
    });
    format!(
        "uri:          {}\nlabel:        {}\nid:           {}\nalgorithm:    {}\nusages:       {}\n\
         signs with:   {}\ndecrypts:     {}\npublic key:   sha256:{}{device}",
        info.uri
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string),
        info.label.as_deref().map_or("-".into(), printable),
        info.id,
        info.algorithm,
        info.usages,
        schemes(info.signature_schemes.iter().map(|s| s.name()).collect()),
        schemes(info.decrypt_schemes.iter().map(|s| s.name()).collect()),
        fingerprint(info),
    )
}

/// Columns are padded to the widest cell, up to this many characters: a longer cell (a
/// 64 KiB label, say) overflows its column instead of padding every row.
const MAX_COLUMN: usize = 48;

/// Rows as an aligned table with a header. Cells are shown [`printable`].
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count().min(MAX_COLUMN));
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(cell);
            if i + 1 < cells.len() {
                let pad = w.saturating_sub(cell.chars().count()) + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A          BB\nlong cell  x\ny          z");
    }

    #[test]
    fn control_characters_are_escaped() {
        let hostile = "web\x1b[2J\x1b]0;pwned\x07\u{202e}gpj.exe\u{9b}";
        let shown = printable(hostile);
        assert_eq!(
            shown,
            "web\\x1b[2J\\x1b]0;pwned\\x07\\u{202e}gpj.exe\\u{9b}"
        );
        assert!(!shown.chars().any(char::is_control));
        assert_eq!(printable("plain label"), "plain label");
        assert_eq!(printable_lines("a\nb\tc\x1b"), "a\nb\tc\\x1b");
        assert_eq!(printable("a\nb"), "a\\x0ab");
    }

    #[test]
    fn huge_cells_do_not_panic_or_pad_every_row() {
        let big = "x".repeat(65_536);
        let t = table(
            &["LABEL", "ID"],
            &[vec![big.clone(), "1".into()], vec!["y".into(), "2".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], format!("{big}  1"));
        assert_eq!(lines[2], format!("y{}2", " ".repeat(MAX_COLUMN + 1)));
    }
}
