//! Output: text for people, one JSON document for scripts (`--json`).

use std::io::Write;

use hardkey_api::KeyInfo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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
            text()
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
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The SHA-256 of the DER SubjectPublicKeyInfo, hex: how `openssl pkey -pubin -outform der |
/// sha256sum` names a public key.
pub(crate) fn fingerprint(info: &KeyInfo) -> String {
    hex::encode(Sha256::digest(info.public_key.der()))
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
    format!(
        "uri:          {}\nlabel:        {}\nid:           {}\nalgorithm:    {}\nusages:       {}\n\
         signs with:   {}\ndecrypts:     {}\npublic key:   sha256:{}",
        info.uri
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string),
        info.label.as_deref().unwrap_or("-"),
        info.id,
        info.algorithm,
        info.usages,
        schemes(info.signature_schemes.iter().map(|s| s.name()).collect()),
        schemes(info.decrypt_schemes.iter().map(|s| s.name()).collect()),
        fingerprint(info),
    )
}

/// Rows as an aligned table with a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
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
}
