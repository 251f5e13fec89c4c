//! Checks of the strings the operator derives names, labels and versions from, so a value
//! that the API server (or Flux) would reject is reported up front, naming the field,
//! instead of failing an apply half-way.

/// A label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside, starting
/// and ending with an alphanumeric (empty is allowed by Kubernetes, but never useful here).
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("a label value must not be empty here".to_owned());
    }
    if value.len() > 63 {
        return Err(format!(
            "it is {} characters long; a label value has at most 63",
            value.len()
        ));
    }
    let bytes = value.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !(inner_ok && ends_ok) {
        return Err(
            "a label value consists of alphanumerics, '-', '_' or '.', and starts and ends with an alphanumeric"
                .to_owned(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain (the names of Secrets, ConfigMaps and most objects): at most 253
/// characters, lowercase alphanumerics, `-` and `.`, each dot-separated part starting and
/// ending with an alphanumeric.
pub fn subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("an object name has 1 to 253 characters".to_owned());
    }
    for part in name.split('.') {
        let bytes = part.as_bytes();
        let ok = !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first().is_some_and(|b| *b != b'-')
            && bytes.last().is_some_and(|b| *b != b'-');
        if !ok {
            return Err(
                "an object name consists of lowercase alphanumerics, '-' and '.', and each dot-separated part starts and ends with an alphanumeric"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// A chart version as Flux's helm-controller accepts it: an exact semver version
/// (`1.2.3`, `v1.2.3-rc.1+build`) or a constraint of the Masterminds syntax Flux uses
/// (`>=1.0.0 <2.0.0`, `^1.2`, `~1.2.3`, `1.x`, `1.2.3 - 1.4.0`, alternatives with `||`).
/// Words such as `latest` are rejected: Flux would fail on them at release time.
pub fn semver_constraint(text: &str) -> Result<(), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("it is blank".to_owned());
    }
    for alternative in text.split("||") {
        let tokens: Vec<&str> = alternative
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.is_empty() {
            return Err("an alternative between '||' is empty".to_owned());
        }
        let mut i = 0;
        while i < tokens.len() {
            // Hyphen range: `A - B`.
            if tokens.get(i + 1) == Some(&"-") {
                let (Some(low), Some(high)) = (tokens.get(i), tokens.get(i + 2)) else {
                    return Err("a hyphen range needs a version on both sides".to_owned());
                };
                version_pattern(low)?;
                version_pattern(high)?;
                i += 3;
                continue;
            }
            comparator(tokens[i])?;
            i += 1;
        }
    }
    Ok(())
}

fn comparator(token: &str) -> Result<(), String> {
    let rest = ["!=", ">=", "<=", "=>", "=<", ">", "<", "=", "~>", "~", "^"]
        .iter()
        .find_map(|op| token.strip_prefix(op))
        .unwrap_or(token);
    if rest.is_empty() {
        return Err(format!("{token:?} has an operator without a version"));
    }
    version_pattern(rest)
}

/// `v?N(.N(.N)?)?(-pre)?(+build)?`, where N may be `x`, `X` or `*` in a constraint.
fn version_pattern(text: &str) -> Result<(), String> {
    let bad = || format!("{text:?} is not a version such as 1.2.3");
    let core = text.strip_prefix('v').unwrap_or(text);
    let (core, build) = match core.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (core, None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return Err(bad());
    }
    for part in &parts {
        let wildcard = matches!(*part, "x" | "X" | "*");
        if !(wildcard || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))) {
            return Err(bad());
        }
    }
    for ident in [pre, build].into_iter().flatten() {
        let ok = !ident.is_empty()
            && ident.split('.').all(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values() {
        assert!(label_value("nextcloud").is_ok());
        assert!(label_value("a.b-c_d").is_ok());
        assert!(label_value(&"a".repeat(63)).is_ok());
        let long = label_value(&"a".repeat(64)).expect_err("too long");
        assert!(long.contains("64 characters"), "{long}");
        assert!(label_value("-a").is_err());
        assert!(label_value("a-").is_err());
        assert!(label_value("").is_err());
    }

    #[test]
    fn subdomains() {
        for ok in ["a", "my-secret", "a.b.c", "x1"] {
            assert!(subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", &"a".repeat(254)] {
            assert!(subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_and_constraints() {
        for ok in [
            "1.2.3",
            "v1.2.3",
            "1.2.3-rc.1+build.5",
            "1.2",
            "1",
            "1.x",
            "*",
            ">=1.0.0 <2.0.0",
            ">=1.0.0, <2.0.0",
            "^1.2",
            "~1.2.3",
            "1.2.3 - 1.4.0",
            "1.x || >=3.0.0",
            "!=1.2.3",
        ] {
            assert!(semver_constraint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "latest", "", " ", "1.2.3.4", "1..2", ">=", "1.2.3 -", "||", "1.2.3-", "stable",
        ] {
            assert!(semver_constraint(bad).is_err(), "{bad:?}");
        }
    }
}
