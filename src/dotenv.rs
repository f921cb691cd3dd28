//! `.env` files read the way their consumer reads them, and edited byte for byte.
//!
//! Three consumers disagree on the same bytes (`U=http://x/#frag` is `http://x/` to Node and to
//! npm `dotenv`, `http://x/#frag` to systemd; backslashes, `export`, quotes spanning lines…), so
//! each [`Dialect`] has its own parser, a port of the consumer's own: systemd's
//! `parse_env_file_internal` (v252, Debian bookworm), npm `dotenv` 16's `LINE` regex, Node
//! 20's `Dotenv::ParseContent`. They are hand-written rather than taken from a crate because an
//! edit must change one entry and keep every other byte (non-UTF-8 values, each line's own
//! ending, `export`): each parser reports where every entry starts and ends in the original
//! bytes, which no dotenv crate exposes. `tests/it/envfile.rs` checks them against the real
//! consumers.
//!
//! Values are secrets: nothing here formats one into a message.
//!
//! Size: three ports of three parsers (~700 lines of code), each of which must be read
//! against its original; they share the entry type and the byte-exact edit.

use std::borrow::Cow;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// systemd's `EnvironmentFile=`.
    Systemd,
    /// The npm `dotenv` package (16.x).
    Dotenv,
    /// Node's `--env-file` and `util.parseEnv` (20.x).
    Node,
}

impl Dialect {
    pub fn parse(s: &str) -> Option<Dialect> {
        match s {
            "systemd" => Some(Dialect::Systemd),
            "dotenv" => Some(Dialect::Dotenv),
            "node" => Some(Dialect::Node),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Systemd => "systemd",
            Dialect::Dotenv => "dotenv",
            Dialect::Node => "node",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    /// The value as the consumer sees it (bytes: a file may hold non-UTF-8).
    pub value: Vec<u8>,
    /// Why the value (or the key) is suspicious; empty when clean.
    pub hidden: Vec<&'static str>,
    /// Where the key starts in the file.
    key_pos: usize,
    /// Where the entry's line ending starts (or the file's end).
    end: usize,
}

impl Entry {
    pub fn value_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvFile {
    pub dialect: Dialect,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// Why `set` or `unset` would not leave the file as asked: nothing is written then.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused(pub String);

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

fn reasons_for(dialect: Dialect, key: &str, value: &[u8]) -> Vec<&'static str> {
    let mut r = match std::str::from_utf8(value) {
        Ok(v) => hidden_reasons(v),
        Err(_) if dialect == Dialect::Systemd => vec!["invalid UTF-8 (systemd then loads none of the file)"],
        Err(_) => vec!["invalid UTF-8"],
    };
    if key.starts_with('\u{FEFF}') {
        r.push("byte order mark before the key");
    }
    r
}

/// What an entry parser found, in the original file's coordinates.
struct Raw {
    key: Vec<u8>,
    value: Vec<u8>,
    key_pos: usize,
    end: usize,
}

impl EnvFile {
    pub fn parse(bytes: Vec<u8>, dialect: Dialect) -> EnvFile {
        let raws = match dialect {
            Dialect::Systemd => parse_systemd(&bytes),
            Dialect::Dotenv => parse_dotenv(&bytes),
            Dialect::Node => parse_node(&bytes),
        };
        let mut entries: Vec<Entry> = raws
            .into_iter()
            .filter(|r| !r.key.is_empty())
            .map(|r| {
                let key = String::from_utf8_lossy(&r.key).into_owned();
                let hidden = reasons_for(dialect, &key, &r.value);
                Entry { key, value: r.value, hidden, key_pos: r.key_pos, end: r.end }
            })
            .collect();
        // Consumers drop some blanks and invisible characters (trailing ones after an
        // unquoted value; JS `trim()` even a BOM), but whoever compares the file's text by eye
        // or by copy does not: the entry's own text is checked too.
        for e in &mut entries {
            let line = String::from_utf8_lossy(&bytes[e.key_pos..e.end]);
            let Some((_, raw)) = line.split_once('=') else { continue };
            for r in hidden_reasons(raw.trim_start_matches([' ', '\t'])) {
                let commented = r == "trailing whitespace" && raw.contains('#');
                if !commented && !e.hidden.contains(&r) {
                    e.hidden.push(r);
                }
            }
        }
        // dotenv skips a BOM as whitespace; the key is clean, the file is not.
        if dialect == Dialect::Dotenv && bytes.starts_with("\u{FEFF}".as_bytes()) {
            if let Some(e) = entries.first_mut() {
                e.hidden.push("byte order mark before the key");
            }
        }
        EnvFile { dialect, bytes, entries }
    }

    pub fn empty(dialect: Dialect) -> EnvFile {
        EnvFile { dialect, bytes: Vec::new(), entries: Vec::new() }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The effective entry for `key`: the last one, as every consumer lets later lines win.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rfind(|e| e.key == key)
    }

    /// An entry the consumer does not see as `key` although a reader would: a BOM or an
    /// invisible character before it, or `export ` where systemd does not strip it.
    pub fn lookalike(&self, key: &str) -> Option<(&Entry, &'static str)> {
        self.entries.iter().rev().find_map(|e| {
            let k = e.key.trim_start_matches(invisible);
            if k.len() != e.key.len() && k == key {
                return Some((e, "invisible character before the key"));
            }
            match e.key.strip_prefix("export") {
                Some(rest) if rest.starts_with([' ', '\t']) && rest.trim_start() == key => {
                    Some((e, "`export ` before the key (systemd does not strip it)"))
                }
                _ => None,
            }
        })
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for e in &self.entries {
            if !keys.contains(&e.key) {
                keys.push(e.key.clone());
            }
        }
        keys
    }

    /// The start of the line an entry's key is on.
    fn line_start(&self, e: &Entry) -> usize {
        self.bytes[..e.key_pos].iter().rposition(|&b| b == b'\n' || b == b'\r').map_or(0, |p| p + 1)
    }

    /// The length of the line ending at `at`: CRLF, LF, a lone CR, or none at the end.
    fn ending_len(&self, at: usize) -> usize {
        match &self.bytes[at..] {
            [b'\r', b'\n', ..] => 2,
            [b'\n' | b'\r', ..] => 1,
            _ => 0,
        }
    }

    /// The file's most common line ending; LF when it has none.
    fn dominant_ending(&self) -> &'static [u8] {
        let lf = self.bytes.iter().enumerate().filter(|&(i, &b)| b == b'\n' && (i == 0 || self.bytes[i - 1] != b'\r')).count();
        let crlf = self.bytes.windows(2).filter(|w| w == b"\r\n").count();
        if crlf > lf {
            b"\r\n"
        } else {
            b"\n"
        }
    }

    /// Sets `key`: the first occurrence is rewritten in place (keeping its indentation and
    /// `export `), later duplicates (which would shadow it) are dropped, a new key is appended
    /// with the file's dominant line ending. Every other byte stays. Refused, and `self`
    /// unchanged, when the dialect cannot represent the value so that it reads back exactly.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Refused> {
        let rendered = render_value(self.dialect, value)
            .ok_or_else(|| Refused(format!("the {} dialect has no quoting that reads this value back exactly", self.dialect.name())))?;
        let line = format!("{key}={rendered}");
        let matching: Vec<&Entry> = self.entries.iter().filter(|e| e.key == key).collect();
        let mut out = Vec::with_capacity(self.bytes.len() + line.len() + 2);
        match matching.first() {
            Some(_) => {
                let mut at = 0;
                for (i, e) in matching.iter().enumerate() {
                    let start = self.line_start(e);
                    if i == 0 {
                        let prefix = &self.bytes[start..e.key_pos];
                        // Indentation and `export ` are the author's; anything else there was
                        // part of the key as the consumer parsed it.
                        let keep = prefix.iter().all(|b| *b == b' ' || *b == b'\t')
                            || prefix.strip_prefix(b"export").is_some_and(|r| !r.is_empty() && r.iter().all(|b| *b == b' ' || *b == b'\t'));
                        out.extend_from_slice(&self.bytes[at..if keep { e.key_pos } else { start }]);
                        out.extend_from_slice(line.as_bytes());
                        at = e.end;
                    } else {
                        out.extend_from_slice(&self.bytes[at..start]);
                        at = e.end + self.ending_len(e.end);
                    }
                }
                out.extend_from_slice(&self.bytes[at..]);
            }
            None => {
                out.extend_from_slice(&self.bytes);
                let nl = self.dominant_ending();
                if !out.is_empty() && !out.ends_with(b"\n") && !out.ends_with(b"\r") {
                    out.extend_from_slice(nl);
                }
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(nl);
            }
        }
        self.replace_checked(out, key, Some(value.as_bytes()))
    }

    /// Removes every entry for `key`, each with its line ending; false if there was none.
    pub fn unset(&mut self, key: &str) -> Result<bool, Refused> {
        let matching: Vec<&Entry> = self.entries.iter().filter(|e| e.key == key).collect();
        if matching.is_empty() {
            return Ok(false);
        }
        let mut out = Vec::with_capacity(self.bytes.len());
        let mut at = 0;
        for e in &matching {
            let start = self.line_start(e);
            out.extend_from_slice(&self.bytes[at..start]);
            at = e.end + self.ending_len(e.end);
        }
        out.extend_from_slice(&self.bytes[at..]);
        self.replace_checked(out, key, None)?;
        Ok(true)
    }

    /// Adopts `bytes` only if the consumer reads `key` as `want` and every other key as before.
    fn replace_checked(&mut self, bytes: Vec<u8>, key: &str, want: Option<&[u8]>) -> Result<(), Refused> {
        let next = EnvFile::parse(bytes, self.dialect);
        if next.get(key).map(|e| e.value.as_slice()) != want {
            return Err(Refused(format!("the {} dialect would not read the value back exactly", self.dialect.name())));
        }
        for k in self.keys().iter().chain(next.keys().iter()).filter(|k| *k != key) {
            if self.get(k).map(|e| &e.value) != next.get(k).map(|e| &e.value) {
                return Err(Refused(format!("the edit would change how the {} dialect reads {k}", self.dialect.name())));
            }
        }
        *self = next;
        Ok(())
    }
}

/// The value in a syntax the dialect reads back exactly, or `None` when it has none.
/// Values with CR or NUL never get here (refused as control characters).
pub fn render_value(dialect: Dialect, v: &str) -> Option<String> {
    if v.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:@+,=%~^*!?".contains(c)) {
        return Some(v.to_string());
    }
    if v.contains(['\0', '\r']) {
        return None;
    }
    match dialect {
        // Inside double quotes systemd unescapes exactly `"`, `\`, `` ` `` and `$`; everything
        // else, newlines included, is literal.
        Dialect::Systemd => {
            let mut out = String::from("\"");
            for c in v.chars() {
                if matches!(c, '"' | '\\' | '`' | '$') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            Some(out)
        }
        // Neither has escapes except `\n` (and dotenv's `\r`) inside double quotes: a value
        // needs a quote character it does not contain.
        Dialect::Dotenv | Dialect::Node => {
            if !v.contains('\'') {
                Some(format!("'{v}'"))
            } else if !v.contains('`') {
                Some(format!("`{v}`"))
            } else if !(v.contains('"') || v.contains("\\n") || (dialect == Dialect::Dotenv && v.contains("\\r"))) {
                Some(format!("\"{v}\""))
            } else if !v.contains(['#', '\n']) && !v.starts_with(['\'', '"', '`', ' ', '\t']) && !v.ends_with([' ', '\t']) {
                Some(v.to_string())
            } else {
                None
            }
        }
    }
}

fn find(hay: &[u8], from: usize, to: usize, b: u8) -> Option<usize> {
    hay.get(from..to)?.iter().position(|&c| c == b).map(|p| p + from)
}

/// systemd `parse_env_file_internal` (v252): a state machine over the raw bytes; `#` and `;`
/// start a comment only where a key could, a backslash before a newline continues the line (a
/// comment's too), CR is a newline, text after a closing quote joins the value.
fn parse_systemd(b: &[u8]) -> Vec<Raw> {
    #[derive(Clone, Copy, PartialEq)]
    enum S {
        PreKey,
        Key,
        PreValue,
        Value,
        ValueEscape,
        Single,
        Double,
        DoubleEscape,
        Comment,
        CommentEscape,
    }
    let nl = |c: u8| c == b'\n' || c == b'\r';
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let mut out = Vec::new();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let (mut key_ws, mut value_ws): (Option<usize>, Option<usize>) = (None, None);
    let mut key_pos = 0;
    let mut state = S::PreKey;
    let mut push = |key: &mut Vec<u8>, value: &mut Vec<u8>, key_ws: Option<usize>, key_pos: usize, end: usize| {
        if let Some(w) = key_ws {
            key.truncate(w);
        }
        out.push(Raw { key: std::mem::take(key), value: std::mem::take(value), key_pos, end });
    };
    let len = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    for (i, &c) in b[..len].iter().enumerate() {
        match state {
            S::PreKey => {
                if c == b'#' || c == b';' {
                    state = S::Comment;
                } else if !ws(c) {
                    state = S::Key;
                    key_ws = None;
                    key_pos = i;
                    key.push(c);
                }
            }
            S::Key => {
                if nl(c) {
                    state = S::PreKey;
                    key.clear();
                } else if c == b'=' {
                    state = S::PreValue;
                    value_ws = None;
                } else {
                    if !ws(c) {
                        key_ws = None;
                    } else if key_ws.is_none() {
                        key_ws = Some(key.len());
                    }
                    key.push(c);
                }
            }
            S::PreValue => {
                if nl(c) {
                    state = S::PreKey;
                    push(&mut key, &mut value, key_ws, key_pos, i);
                } else if c == b'\'' {
                    state = S::Single;
                } else if c == b'"' {
                    state = S::Double;
                } else if c == b'\\' {
                    state = S::ValueEscape;
                } else if !ws(c) {
                    state = S::Value;
                    value.push(c);
                }
            }
            S::Value => {
                if nl(c) {
                    state = S::PreKey;
                    if let Some(w) = value_ws {
                        value.truncate(w);
                    }
                    push(&mut key, &mut value, key_ws, key_pos, i);
                } else if c == b'\\' {
                    state = S::ValueEscape;
                    value_ws = None;
                } else {
                    if !ws(c) {
                        value_ws = None;
                    } else if value_ws.is_none() {
                        value_ws = Some(value.len());
                    }
                    value.push(c);
                }
            }
            S::ValueEscape => {
                state = S::Value;
                if !nl(c) {
                    value.push(c);
                }
            }
            S::Single => {
                if c == b'\'' {
                    state = S::PreValue;
                } else {
                    value.push(c);
                }
            }
            S::Double => {
                if c == b'"' {
                    state = S::PreValue;
                } else if c == b'\\' {
                    state = S::DoubleEscape;
                } else {
                    value.push(c);
                }
            }
            S::DoubleEscape => {
                state = S::Double;
                if matches!(c, b'"' | b'\\' | b'`' | b'$') {
                    value.push(c);
                } else if c != b'\n' {
                    value.extend_from_slice(&[b'\\', c]);
                }
            }
            S::Comment => {
                if c == b'\\' {
                    state = S::CommentEscape;
                } else if nl(c) {
                    state = S::PreKey;
                }
            }
            // v252: an escaped newline continues the comment onto the next line.
            S::CommentEscape => state = S::Comment,
        }
    }
    if matches!(state, S::PreValue | S::Value | S::ValueEscape | S::Single | S::Double | S::DoubleEscape) {
        if state == S::Value {
            if let Some(w) = value_ws {
                value.truncate(w);
            }
        }
        push(&mut key, &mut value, key_ws, key_pos, b.len());
    }
    out
}

/// `bytes` with some bytes dropped or replaced, and for each byte kept the original offset it
/// came from (one more at the end), so positions map back into the file.
struct Mapped {
    text: Vec<u8>,
    from: Vec<usize>,
}

impl Mapped {
    fn orig(&self, i: usize) -> usize {
        self.from[i]
    }
}

/// npm `dotenv` 16's `parse`: CRLF and lone CR become LF, then `LINE` (a JS regex with the
/// `m` and `g` flags, ported below with JS's `\s` and `\w`) is matched repeatedly; a value is
/// trimmed, loses surrounding matching quotes, and in double quotes `\n` and `\r` expand.
/// Not ported: JS's `^`/`$` also match at U+2028/U+2029, which bst flags as invisible anyway.
fn parse_dotenv(b: &[u8]) -> Vec<Raw> {
    use regex_automata::{meta::Regex, util::syntax, Input};
    static LINE: OnceLock<Regex> = OnceLock::new();
    const S: &str = r"[\t\n\x0B\x0C\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF}]";
    let re = LINE.get_or_init(|| {
        let pat = format!(
            r#"(?m)^{S}*(?:export{S}+)?([0-9A-Za-z_.\-]+)({S}*={S}*?|:{S}+?)({S}*'(?-u:\\'|[^'])*'|{S}*"(?-u:\\"|[^"])*"|{S}*`(?-u:\\`|[^`])*`|(?-u:[^#\r\n])+)?{S}*(?:#(?-u:[^\n])*)?$"#
        );
        Regex::builder().syntax(syntax::Config::new().utf8(false)).build(&pat).expect("the dotenv LINE pattern compiles")
    });
    let mut m = Mapped { text: Vec::with_capacity(b.len()), from: Vec::with_capacity(b.len() + 1) };
    let mut i = 0;
    while i < b.len() {
        m.from.push(i);
        if b[i] == b'\r' {
            m.text.push(b'\n');
            i += if b.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
        } else {
            m.text.push(b[i]);
            i += 1;
        }
    }
    m.from.push(b.len());
    let t = &m.text;
    let mut caps = re.create_captures();
    let mut out = Vec::new();
    let mut at = 0;
    while at <= t.len() {
        re.search_captures(&Input::new(t).range(at..), &mut caps);
        let (Some(all), Some(k), Some(sep)) = (caps.get_match(), caps.get_group(1), caps.get_group(2)) else { break };
        let val = caps.get_group(3).map_or(&t[0..0], |g| &t[g.range()]);
        let mut v = js_trim(val);
        let quote = v.first().copied();
        if v.len() >= 2 && matches!(quote, Some(b'\'' | b'"' | b'`')) && v.last() == quote.as_ref() {
            v = &v[1..v.len() - 1];
        }
        let mut value = v.to_vec();
        if quote == Some(b'"') {
            value = replace(&value, b"\\n", b"\n");
            value = replace(&value, b"\\r", b"\r");
        }
        let tail = caps.get_group(3).map_or(sep.end, |g| g.end);
        let end = find(t, tail, t.len(), b'\n').unwrap_or(t.len());
        out.push(Raw { key: t[k.range()].to_vec(), value, key_pos: m.orig(k.start), end: m.orig(end) });
        at = all.end().max(at + 1);
    }
    out
}

fn js_trim(mut v: &[u8]) -> &[u8] {
    const SPACES: [&str; 18] = [
        "\t", "\n", "\x0B", "\x0C", "\r", " ", "\u{A0}", "\u{1680}", "\u{2028}", "\u{2029}", "\u{202F}", "\u{205F}", "\u{3000}",
        "\u{FEFF}", "\u{2000}", "\u{2001}", "\u{2002}", "\u{2003}",
    ];
    const MORE: [&str; 7] = ["\u{2004}", "\u{2005}", "\u{2006}", "\u{2007}", "\u{2008}", "\u{2009}", "\u{200A}"];
    'front: loop {
        for s in SPACES.iter().chain(MORE.iter()) {
            if let Some(r) = v.strip_prefix(s.as_bytes()) {
                v = r;
                continue 'front;
            }
        }
        break;
    }
    'back: loop {
        for s in SPACES.iter().chain(MORE.iter()) {
            if let Some(r) = v.strip_suffix(s.as_bytes()) {
                v = r;
                continue 'back;
            }
        }
        break;
    }
    v
}

fn replace(v: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

/// Node 20's `Dotenv::ParseContent`: every CR is dropped, then the text is consumed key by
/// key: a key runs to the next `=` (across lines), a quoted value to the next same quote
/// (across lines, no escapes; `\n` expands in double quotes), an unquoted one to the end of
/// its line or the first `#`. Only spaces are trimmed.
fn parse_node(b: &[u8]) -> Vec<Raw> {
    let mut m = Mapped { text: Vec::with_capacity(b.len()), from: Vec::with_capacity(b.len() + 1) };
    for (i, &c) in b.iter().enumerate() {
        if c != b'\r' {
            m.text.push(c);
            m.from.push(i);
        }
    }
    m.from.push(b.len());
    let t = &m.text;
    // A line ending's start in the file: the CR Node dropped belongs to it.
    let end_at = |i: usize| {
        let o = m.orig(i);
        if o > 0 && o <= b.len() && b[o - 1] == b'\r' && (o == b.len() || b[o] == b'\n') {
            o - 1
        } else {
            o
        }
    };
    let trim = |lo: &mut usize, hi: &mut usize| {
        while *lo < *hi && t[*lo] == b' ' {
            *lo += 1;
        }
        while *hi > *lo && t[*hi - 1] == b' ' {
            *hi -= 1;
        }
    };
    let (mut lo, mut hi) = (0, t.len());
    trim(&mut lo, &mut hi);
    let mut out = Vec::new();
    while lo < hi {
        if t[lo] == b'\n' || t[lo] == b'#' {
            if let Some(nl) = find(t, lo, hi, b'\n') {
                lo = nl + 1;
                continue;
            }
        }
        let Some(eq) = find(t, lo, hi, b'=') else { break };
        let (mut klo, mut khi) = (lo, eq);
        trim(&mut klo, &mut khi);
        lo = eq + 1;
        if lo >= hi || t[lo] == b'\n' {
            out.push(Raw { key: t[klo..khi].to_vec(), value: Vec::new(), key_pos: m.orig(klo), end: end_at(lo.min(hi)) });
            continue;
        }
        trim(&mut lo, &mut hi);
        if klo == khi {
            break;
        }
        if t[klo..khi].starts_with(b"export ") {
            klo += 7;
        }
        let key = t[klo..khi].to_vec();
        let key_pos = m.orig(klo);
        if lo >= hi {
            out.push(Raw { key, value: Vec::new(), key_pos, end: end_at(hi) });
            break;
        }
        let q = t[lo];
        if matches!(q, b'"' | b'\'' | b'`') {
            match find(t, lo + 1, hi, q) {
                Some(close) => {
                    let mut value = t[lo + 1..close].to_vec();
                    if q == b'"' {
                        value = replace(&value, b"\\n", b"\n");
                    }
                    let nl = find(t, close + 1, hi, b'\n');
                    out.push(Raw { key, value, key_pos, end: end_at(nl.unwrap_or(t.len())) });
                    lo = nl.map_or(hi, |n| n + 1);
                }
                None => match find(t, lo, hi, b'\n') {
                    Some(nl) => {
                        out.push(Raw { key, value: t[lo..nl].to_vec(), key_pos, end: end_at(nl) });
                        lo = nl;
                    }
                    None => break,
                },
            }
            continue;
        }
        let nl = find(t, lo, hi, b'\n');
        let line_end = nl.unwrap_or(hi);
        let vend = find(t, lo, line_end, b'#').unwrap_or(line_end);
        let (mut vlo, mut vhi) = (lo, vend);
        trim(&mut vlo, &mut vhi);
        out.push(Raw { key, value: t[vlo..vhi].to_vec(), key_pos, end: end_at(nl.unwrap_or(t.len())) });
        lo = nl.map_or(hi, |n| n + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str, d: Dialect) -> EnvFile {
        EnvFile::parse(s.as_bytes().to_vec(), d)
    }

    fn val(f: &EnvFile, k: &str) -> Option<String> {
        f.get(k).map(|e| e.value_str().into_owned())
    }

    #[test]
    fn each_dialect_reads_like_its_consumer() {
        let text = "# c\nexport A=1\nU=http://x/#frag\nB=\"a\\nb\" # n\nC='x' # n\nD=\"it\\\"s\"\n";
        let s = parse(text, Dialect::Systemd);
        assert_eq!(val(&s, "U").as_deref(), Some("http://x/#frag"));
        assert_eq!(val(&s, "A"), None, "systemd keeps `export A` as the key");
        assert_eq!(s.lookalike("A").map(|(_, why)| why.starts_with("`export `")), Some(true));
        assert_eq!(val(&s, "B").as_deref(), Some("a\\nb# n"), "text after the closing quote joins, blanks skipped");
        assert_eq!(val(&s, "D").as_deref(), Some("it\"s"));
        for d in [Dialect::Dotenv, Dialect::Node] {
            let f = parse(text, d);
            assert_eq!(val(&f, "A").as_deref(), Some("1"), "{d:?}");
            assert_eq!(val(&f, "U").as_deref(), Some("http://x/"), "{d:?}");
            assert_eq!(val(&f, "B").as_deref(), Some("a\nb"), "{d:?}");
            assert_eq!(val(&f, "C").as_deref(), Some("x"), "{d:?}");
        }
        assert_eq!(val(&parse(text, Dialect::Dotenv), "D").as_deref(), Some("it\\\"s"));
        assert_eq!(val(&parse(text, Dialect::Node), "D").as_deref(), Some("it\\"));
    }

    #[test]
    fn edits_keep_every_other_byte() {
        let text = b"# keep \xff me\r\nA=1\n\nexport B='x'\r\nA=2\r\nZ=\xfe".to_vec();
        for d in [Dialect::Systemd, Dialect::Dotenv, Dialect::Node] {
            let mut f = EnvFile::parse(text.clone(), d);
            assert_eq!(f.bytes(), text.as_slice());
            f.set("A", "new value").unwrap();
            f.set("C", "3").unwrap();
            let want: &[u8] = match d {
                Dialect::Systemd => b"# keep \xff me\r\nA=\"new value\"\n\nexport B='x'\r\nZ=\xfe\nC=3\n",
                _ => b"# keep \xff me\r\nA='new value'\n\nexport B='x'\r\nZ=\xfe\nC=3\n",
            };
            assert_eq!(String::from_utf8_lossy(f.bytes()), String::from_utf8_lossy(want), "{d:?}");
            if d != Dialect::Systemd {
                f.set("B", "y z").unwrap();
                assert!(f.bytes().windows(15).any(|w| w == b"export B='y z'\r"), "{d:?}");
                assert!(f.unset("B").unwrap());
                assert!(!f.unset("B").unwrap());
            }
        }
    }

    #[test]
    fn values_a_dialect_cannot_hold_are_refused() {
        let all = "a'b\"c`d #e";
        assert!(render_value(Dialect::Node, all).is_none());
        assert!(render_value(Dialect::Dotenv, all).is_none());
        assert!(render_value(Dialect::Systemd, all).is_some());
        let mut f = parse("A=1\n", Dialect::Node);
        assert!(f.set("K", all).is_err());
        assert_eq!(f.bytes(), b"A=1\n");
    }

    /// Seeded mutations of the committed corpus (tests/corpus/dotenv): parsing never panics,
    /// an untouched file is kept byte for byte, and an edit leaves the other keys' values.
    #[test]
    fn fuzzed_env_files_never_panic_and_edits_keep_the_rest() {
        use proptest::test_runner::{Config as PtConfig, TestRunner};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/dotenv");
        let corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        assert!(corpus.len() >= 3);
        let mut runner = TestRunner::new(PtConfig { cases: 600, ..PtConfig::default() });
        let strat = (0..corpus.len(), any::<usize>(), any::<u8>(), 0u8..3, "\\PC{0,8}", 0u8..3, "[a-z '\"#\\\\\n]{0,8}");
        runner
            .run(&strat, |(i, pos, byte, op, splice, d, v)| {
                let mut b = corpus[i].clone();
                let at = pos % (b.len() + 1);
                match op {
                    0 if at < b.len() => b[at] = byte,
                    1 => b.truncate(at),
                    _ => b.splice(at..at, splice.bytes()).for_each(drop),
                }
                let d = [Dialect::Systemd, Dialect::Dotenv, Dialect::Node][d as usize];
                let mut f = EnvFile::parse(b.clone(), d);
                prop_assert_eq!(f.bytes(), b.as_slice());
                let before = f.clone();
                if f.set("NEWKEY", &v).is_ok() {
                    prop_assert_eq!(f.get("NEWKEY").map(|e| e.value.clone()), Some(v.into_bytes()));
                    for k in before.keys() {
                        prop_assert_eq!(before.get(&k).map(|e| &e.value), f.get(&k).map(|e| &e.value));
                    }
                } else {
                    prop_assert_eq!(&f, &before);
                }
                Ok(())
            })
            .unwrap();
    }

    proptest! {
        #[test]
        fn any_value_set_reads_back_or_is_refused(v in "[^\u{0}\r]{0,30}", d in 0u8..3) {
            let d = [Dialect::Systemd, Dialect::Dotenv, Dialect::Node][d as usize];
            let mut f = parse("X=1\n# c\n", d);
            if f.set("K", &v).is_ok() {
                let back = EnvFile::parse(f.bytes().to_vec(), d);
                prop_assert_eq!(back.get("K").unwrap().value.clone(), v.into_bytes());
                prop_assert_eq!(val(&back, "X"), Some("1".to_string()));
            } else {
                prop_assert!(d != Dialect::Systemd, "systemd can hold any value without CR or NUL");
            }
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            for d in [Dialect::Systemd, Dialect::Dotenv, Dialect::Node] {
                let _ = parse(&s, d);
            }
        }
    }
}
