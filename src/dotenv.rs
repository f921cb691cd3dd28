//! `.env` files with real dotenv semantics (comments, `export`, single/double/backtick quotes,
//! escapes and multi-line values in double quotes, CRLF, a BOM), kept line for line so an
//! edit changes one entry and nothing else. Values are secrets: nothing here formats one
//! into a message.

/// One logical entry or an untouched stretch of text (comments, blanks, unparsable lines).
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Entry(Entry),
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// The entry's original text (one or more lines, without the final newline).
    pub raw: String,
    /// Why the value (or the key) is suspicious; empty when clean.
    pub hidden: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnvFile {
    pub items: Vec<Item>,
    pub bom: bool,
    pub crlf: bool,
}

fn is_key(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_') && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

/// Characters nobody types on purpose into a token: zero-width, BOM, bidi marks, controls.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}')
        || (c.is_control() && c != '\n' && c != '\t')
}

/// Reasons a value would not survive a copy-paste comparison.
pub fn hidden_reasons(value: &str) -> Vec<&'static str> {
    let mut r = Vec::new();
    if value.starts_with(char::is_whitespace) {
        r.push("leading whitespace");
    }
    if value.ends_with(char::is_whitespace) {
        r.push("trailing whitespace");
    }
    if value.contains('\u{FEFF}') {
        r.push("byte order mark");
    }
    if value.chars().any(|c| invisible(c) && c != '\u{FEFF}' && !c.is_control()) {
        r.push("zero-width or invisible character");
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        r.push("control character");
    }
    r
}

impl EnvFile {
    pub fn parse(text: &str) -> EnvFile {
        let bom = text.starts_with('\u{FEFF}');
        let body = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let crlf = body.contains("\r\n");
        let lines: Vec<&str> = body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
        // A trailing newline yields one empty last piece that is not a line.
        let n = if body.ends_with('\n') { lines.len() - 1 } else { lines.len() };
        let mut items = Vec::new();
        let mut i = 0;
        while i < n {
            let line = lines[i];
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                items.push(Item::Other(line.to_string()));
                i += 1;
                continue;
            }
            let decl = trimmed.strip_prefix("export ").map_or(trimmed, str::trim_start);
            let Some((k, rest)) = decl.split_once('=') else {
                items.push(Item::Other(line.to_string()));
                i += 1;
                continue;
            };
            let key = k.trim();
            if !is_key(key) {
                items.push(Item::Other(line.to_string()));
                i += 1;
                continue;
            }
            let rest_trim = rest.trim_start();
            let quote = rest_trim.chars().next().filter(|c| matches!(c, '"' | '\'' | '`'));
            let (value, used, mut hidden) = match quote {
                Some(q) => {
                    // A quoted value may span lines (dotenv allows it); find the closing quote.
                    let mut acc = rest_trim[1..].to_string();
                    let mut used = 1;
                    loop {
                        if let Some(end) = closing(&acc, q) {
                            acc.truncate(end);
                            break;
                        }
                        if i + used >= n {
                            // Unterminated: dotenv takes the rest of the line literally.
                            acc = rest_trim.to_string();
                            used = 1;
                            break;
                        }
                        acc.push('\n');
                        acc.push_str(lines[i + used]);
                        used += 1;
                    }
                    let v = if q == '"' { unescape(&acc) } else { acc };
                    (v, used, Vec::new())
                }
                None => {
                    let without_comment = match rest.find(" #").or_else(|| rest.find("\t#")) {
                        Some(p) => &rest[..p],
                        None => rest,
                    };
                    let v = without_comment.trim().to_string();
                    // dotenv trims, but other readers (systemd, docker) do not: flag it.
                    let mut h = Vec::new();
                    if without_comment.trim_end_matches([' ', '\t']).len() != without_comment.len() && rest.find(" #").is_none() {
                        h.push("trailing whitespace");
                    }
                    (v, 1, h)
                }
            };
            for r in hidden_reasons(&value) {
                if !hidden.contains(&r) {
                    hidden.push(r);
                }
            }
            if k.contains('\u{FEFF}') || (bom && items.is_empty()) {
                hidden.push("byte order mark before the key");
            }
            let raw = lines[i..i + used].join("\n");
            items.push(Item::Entry(Entry { key: key.to_string(), value, raw, hidden }));
            i += used;
        }
        EnvFile { items, bom, crlf }
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.items.iter().filter_map(|i| match i {
            Item::Entry(e) => Some(e),
            Item::Other(_) => None,
        })
    }

    /// The effective entry for `key`: the last one, as dotenv's parser lets later lines win.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries().filter(|e| e.key == key).last()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for e in self.entries() {
            if !keys.contains(&e.key) {
                keys.push(e.key.clone());
            }
        }
        keys
    }

    /// Sets `key`: the first occurrence is rewritten in place, later duplicates (which would
    /// shadow it) are dropped; a new key is appended. Everything else stays byte for byte.
    pub fn set(&mut self, key: &str, value: &str) {
        let line = format!("{key}={}", render_value(value));
        let mut done = false;
        self.items.retain_mut(|item| match item {
            Item::Entry(e) if e.key == key => {
                if done {
                    false
                } else {
                    *e = Entry { key: key.to_string(), value: value.to_string(), raw: line.clone(), hidden: hidden_reasons(value) };
                    done = true;
                    true
                }
            }
            _ => true,
        });
        if !done {
            self.items.push(Item::Entry(Entry {
                key: key.to_string(),
                value: value.to_string(),
                raw: line,
                hidden: hidden_reasons(value),
            }));
        }
    }

    /// Removes every entry for `key`; true if there was one.
    pub fn unset(&mut self, key: &str) -> bool {
        let before = self.items.len();
        self.items.retain(|i| !matches!(i, Item::Entry(e) if e.key == key));
        before != self.items.len()
    }

    pub fn render(&self) -> String {
        let nl = if self.crlf { "\r\n" } else { "\n" };
        let mut out = String::new();
        if self.bom {
            out.push('\u{FEFF}');
        }
        for item in &self.items {
            let text = match item {
                Item::Entry(e) => &e.raw,
                Item::Other(o) => o,
            };
            out.push_str(&text.replace('\n', nl));
            out.push_str(nl);
        }
        out
    }
}

fn closing(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if q == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == q && !escaped {
            return Some(i);
        }
        escaped = false;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The value in the plainest syntax that every dotenv reader agrees on.
pub fn render_value(v: &str) -> String {
    let plain = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:@+,=%~^*!?".contains(c));
    if plain {
        v.to_string()
    } else if !v.contains('\'') && !v.contains('\n') && !v.contains('\r') {
        format!("'{v}'")
    } else {
        let mut out = String::from("\"");
        for c in v.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_real_dotenv_syntax() {
        let f = EnvFile::parse(
            "# comment\nexport A=1\nB = two words # note\nC=\"line1\\nline2 \\\"q\\\"\"\nD='it''s'\nE='$HOME raw'\nF=\"multi\nline\"\nG=\nbad line\n",
        );
        let v = |k: &str| f.get(k).map(|e| e.value.clone());
        assert_eq!(v("A").as_deref(), Some("1"));
        assert_eq!(v("B").as_deref(), Some("two words"));
        assert_eq!(v("C").as_deref(), Some("line1\nline2 \"q\""));
        assert_eq!(v("E").as_deref(), Some("$HOME raw"));
        assert_eq!(v("F").as_deref(), Some("multi\nline"));
        assert_eq!(v("G").as_deref(), Some(""));
        assert_eq!(f.keys(), vec!["A", "B", "C", "D", "E", "F", "G"]);
        assert!(f.entries().all(|e| e.hidden.is_empty()), "{:?}", f.entries().filter(|e| !e.hidden.is_empty()).collect::<Vec<_>>());
    }

    #[test]
    fn flags_hidden_characters() {
        let f = EnvFile::parse("\u{FEFF}TOKEN=abc\r\nSECRET=abc \r\nZW=ab\u{200B}c\r\nQ=\" x\"\r\nCTRL=a\u{7}b\r\nOK=fine\r\n");
        assert!(f.bom && f.crlf);
        let h = |k: &str| f.get(k).unwrap().hidden.clone();
        assert_eq!(h("TOKEN"), vec!["byte order mark before the key"]);
        assert_eq!(h("SECRET"), vec!["trailing whitespace"]);
        assert_eq!(f.get("SECRET").unwrap().value, "abc", "CRLF is not part of the value");
        assert_eq!(h("ZW"), vec!["zero-width or invisible character"]);
        assert_eq!(h("Q"), vec!["leading whitespace"]);
        assert_eq!(h("CTRL"), vec!["control character"]);
        assert!(h("OK").is_empty());
    }

    #[test]
    fn edits_keep_every_other_line() {
        let text = "# keep me\r\nA=1\r\n\r\nexport B='x'\r\nA=2\r\n";
        let mut f = EnvFile::parse(text);
        assert_eq!(f.render(), text, "round trip is exact");
        f.set("A", "new value");
        f.set("C", "3");
        assert_eq!(f.render(), "# keep me\r\nA='new value'\r\n\r\nexport B='x'\r\nC=3\r\n");
        assert!(f.unset("B"));
        assert!(!f.unset("B"));
        assert_eq!(f.render(), "# keep me\r\nA='new value'\r\n\r\nC=3\r\n");
    }

    /// Seeded mutations of the committed corpus (tests/corpus/dotenv): parsing never panics,
    /// and an untouched round trip is byte for byte.
    #[test]
    fn fuzzed_env_files_never_panic_and_round_trip() {
        use proptest::test_runner::{Config as PtConfig, TestRunner};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/dotenv");
        let corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        assert!(corpus.len() >= 3);
        for c in &corpus {
            let text = String::from_utf8_lossy(c);
            assert_eq!(
                EnvFile::parse(&text).render(),
                if text.ends_with('\n') {
                    text.to_string()
                } else {
                    format!("{text}{}", if text.contains("\r\n") { "\r\n" } else { "\n" })
                }
            );
        }
        let mut runner = TestRunner::new(PtConfig { cases: 600, ..PtConfig::default() });
        let strat = (0..corpus.len(), any::<usize>(), any::<u8>(), 0u8..3, "\\PC{0,8}");
        runner
            .run(&strat, |(i, pos, byte, op, splice)| {
                let mut b = corpus[i].clone();
                let at = pos % (b.len() + 1);
                match op {
                    0 if at < b.len() => b[at] = byte,
                    1 => b.truncate(at),
                    _ => b.splice(at..at, splice.bytes()).for_each(drop),
                }
                let f = EnvFile::parse(&String::from_utf8_lossy(&b));
                let again = EnvFile::parse(&f.render());
                prop_assert_eq!(f.keys(), again.keys());
                Ok(())
            })
            .unwrap();
    }

    proptest! {
        #[test]
        fn any_value_set_reads_back_the_same(v in "[^\u{0}\r]{0,30}") {
            let mut f = EnvFile::parse("X=1\n# c\n");
            f.set("K", &v);
            let back = EnvFile::parse(&f.render());
            prop_assert_eq!(&back.get("K").unwrap().value, &v);
            prop_assert_eq!(back.get("X").map(|e| e.value.as_str()), Some("1"));
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let f = EnvFile::parse(&s);
            let _ = f.render();
        }
    }
}
