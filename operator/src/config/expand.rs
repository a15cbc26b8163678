//! `--expand-env`: environment-variable substitution with Go's `os.ExpandEnv` rules.

/// Replaces `$VAR` and `${VAR}` in `text` with `lookup(VAR)`, an unset variable giving
/// the empty string, as Go's `os.ExpandEnv` does (spire-controller-manager's
/// `--expand-env`). A name is letters, digits and `_`; `$` followed by one of
/// `*#$@!?-` or a digit names that one-character variable. A `$` followed by
/// anything else is kept; `${}` is dropped, and so is `${` when no `}` follows.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = shell_name(after);
        match (name, consumed) {
            (_, 0) => out.push('$'),
            (Some(name), _) => out.push_str(&lookup(name).unwrap_or_default()),
            (None, _) => {}
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// The variable name at the start of `s` (just after a `$`) and how many bytes of `s`
/// it spans; `(None, n)` is bad syntax that Go swallows, `(_, 0)` no name at all.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let Some(first) = s.chars().next() else {
        return (None, 0);
    };
    if first == '{' {
        let inner = &s[1..];
        if let Some(c) = inner.chars().next()
            && is_special(c)
            && inner[c.len_utf8()..].starts_with('}')
        {
            return (Some(&inner[..c.len_utf8()]), c.len_utf8() + 2);
        }
        return match inner.find('}') {
            Some(0) => (None, 2),
            None => (None, 1),
            Some(end) => (Some(&inner[..end]), end + 2),
        };
    }
    if is_special(first) {
        return (Some(&s[..first.len_utf8()]), first.len_utf8());
    }
    let len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    if len == 0 {
        (None, 0)
    } else {
        (Some(&s[..len]), len)
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '*' | '#' | '$' | '@' | '!' | '?' | '-') || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TD" => Some("example.org".into()),
            "CLUSTER_NAME" => Some("prod".into()),
            "1" => Some("one".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_like_go_os_expand_env() {
        let cases = [
            ("trustDomain: $TD", "trustDomain: example.org"),
            ("trustDomain: ${TD}", "trustDomain: example.org"),
            ("${CLUSTER_NAME}-a", "prod-a"),
            ("$CLUSTER_NAME-a", "prod-a"),
            ("$UNSET|${UNSET}", "|"),
            ("no variables", "no variables"),
            ("cost: 5$", "cost: 5$"),
            ("a $ b", "a $ b"),
            ("$1x", "onex"),
            ("${}x", "x"),
            ("${TD", "TD"),
            ("é$TDé", "éexample.orgé"),
            ("$$", ""),
        ];
        for (text, want) in cases {
            assert_eq!(expand_env(text, env), want, "{text:?}");
        }
    }
}
