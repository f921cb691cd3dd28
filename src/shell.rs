//! Quoting for POSIX `sh`. Every value that reaches a remote command line goes through
//! [`quote`]: paths with spaces, quotes, `$(…)`, backticks or newlines must stay data.

use std::borrow::Cow;

/// Quotes `s` as one `sh` word. Plain words are left readable (`-v` output is for humans);
/// anything else is wrapped in single quotes, the only quoting with no special characters
/// inside, with each `'` written as `'\''`.
pub fn quote(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b':' | b'=' | b'@' | b'%' | b'+' | b',' | b'-')
        })
        // A leading `=` or `~` would be fine for sh, but `~` expands: keep it quoted.
        && !s.starts_with('~');
    if plain {
        Cow::Borrowed(s)
    } else {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('\'');
        for c in s.chars() {
            if c == '\'' {
                out.push_str("'\\''");
            } else {
                out.push(c);
            }
        }
        out.push('\'');
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::quote;
    use proptest::prelude::*;
    use std::process::Command;

    fn echo_through_sh(s: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(format!("printf '%s' {}", quote(s))).output().expect("sh runs");
        assert!(out.status.success(), "sh failed for {s:?}: {:?}", out);
        String::from_utf8(out.stdout).expect("utf8")
    }

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(quote("/home/bonk/stagging-bst"), "/home/bonk/stagging-bst");
        assert_eq!(quote("releases/20260220T051228Z"), "releases/20260220T051228Z");
    }

    #[test]
    fn hostile_values_are_data() {
        for s in ["", "a b", "it's", "$(touch /tmp/pwned)", "`id`", "a\nb", ";rm -rf /", "~", "x'\"y", "é ü 日本"] {
            assert_eq!(echo_through_sh(s), s);
        }
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_string_round_trips_through_sh(s in "[^\u{0}]{0,40}") {
            prop_assert_eq!(echo_through_sh(&s), s);
        }
    }
}
