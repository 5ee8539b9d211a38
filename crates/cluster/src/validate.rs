//! Field validation for cluster objects, with the Kubernetes naming rules.
//!
//! Why a module of its own: the same rules (DNS-1123 labels and subdomains,
//! IANA service names for ports) apply to every kind, and each failure must
//! name the field path (`spec.containers[1].ports[0].name`) so the user can
//! find it in the manifest. The rules follow Kubernetes'
//! `apimachinery/pkg/util/validation`: RFC 1123 labels are at most 63
//! characters of `[a-z0-9-]`, starting and ending alphanumeric; subdomains are
//! dot-separated labels, at most 253 characters; port names are IANA service
//! names (RFC 6335: at most 15 characters, at least one letter, no `--`).
//! Service names are RFC 1035 labels (a letter first, so that the name is a
//! valid DNS label under `svc.cluster.local`); label keys are qualified names
//! (`prefix/name`, the prefix a subdomain) and label values at most 63
//! characters, as `IsQualifiedName` and `IsValidLabelValue` define them.

use std::fmt;

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The field is missing or empty but must be set.
    Required,
    /// The field must be set because of another field; `condition` says
    /// which (`when a service has more than one port`).
    RequiredWhen { condition: &'static str },
    /// A name that breaks the naming rule `rule`.
    InvalidName { value: String, rule: NameRule },
    /// A number outside `min..=max`.
    OutOfRange { value: i64, min: i64, max: i64 },
    /// The value was already used by another entry of the same list.
    Duplicate { value: String },
    /// A list that must have at least one entry is empty.
    Empty,
    /// Anything else, said in words.
    Invalid { value: String, reason: String },
}

/// The naming rules of Kubernetes, for messages that say which one applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
    Dns1123Label,
    /// RFC 1123 subdomain: labels joined by `.`, at most 253 characters.
    Dns1123Subdomain,
    /// IANA service name (RFC 6335), as used for port names.
    IanaServiceName,
    /// Environment variable name: printable, no `=`, not empty.
    EnvVarName,
    /// RFC 1035 label: like an RFC 1123 label but starting with a letter
    /// (Service names).
    Dns1035Label,
    /// Label key: an optional DNS-1123 subdomain prefix and `/`, then a
    /// name of at most 63 alphanumerics, `-`, `_` or `.`.
    LabelKey,
    /// Label value: empty, or at most 63 alphanumerics, `-`, `_` or `.`,
    /// starting and ending alphanumeric.
    LabelValue,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameRule::Dns1123Label => {
                "a DNS-1123 label must be at most 63 lowercase letters, digits or '-', \
                 starting and ending with a letter or digit (e.g. `web-a`)"
            }
            NameRule::Dns1123Subdomain => {
                "a DNS-1123 subdomain must be at most 253 characters of lowercase letters, \
                 digits, '-' and '.', each dot-separated part starting and ending with a \
                 letter or digit (e.g. `web-a` or `node1.lab`)"
            }
            NameRule::IanaServiceName => {
                "a port name must be at most 15 lowercase letters, digits or '-', contain \
                 at least one letter, and not start, end or repeat '-' (e.g. `http`)"
            }
            NameRule::EnvVarName => {
                "an environment variable name must be non-empty and contain no '='"
            }
            NameRule::Dns1035Label => {
                "a DNS-1035 label must be at most 63 lowercase letters, digits or '-', \
                 starting with a letter and ending with a letter or digit (e.g. `web`)"
            }
            NameRule::LabelKey => {
                "a label key must be a name of at most 63 letters, digits, '-', '_' or '.', \
                 starting and ending with a letter or digit, optionally prefixed by a \
                 DNS subdomain and '/' (e.g. `app` or `app.kubernetes.io/name`)"
            }
            NameRule::LabelValue => {
                "a label value must be empty or at most 63 letters, digits, '-', '_' or '.', \
                 starting and ending with a letter or digit (e.g. `web`)"
            }
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Required => f.write_str("is required"),
            Problem::RequiredWhen { condition } => write!(f, "is required {condition}"),
            Problem::InvalidName { value, rule } => write!(f, "`{value}` is not valid: {rule}"),
            Problem::OutOfRange { value, min, max } => {
                write!(f, "{value} is out of range; must be from {min} to {max}")
            }
            Problem::Duplicate { value } => write!(f, "`{value}` appears more than once"),
            Problem::Empty => f.write_str("must list at least one entry"),
            Problem::Invalid { value, reason } => write!(f, "`{value}` is not valid: {reason}"),
        }
    }
}

/// One invalid field: its path from the object root and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Path like `spec.containers[0].ports[1].containerPort`.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// Whether `s` is an RFC 1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge_ok = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !b.is_empty()
        && b.len() <= 63
        && edge_ok(b.first())
        && edge_ok(b.last())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Whether `s` is an RFC 1123 subdomain.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Whether `s` is an IANA service name (port names).
pub fn is_iana_svc_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
        && !s.contains("--")
}

/// Whether `s` is an RFC 1035 label (a letter first).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// The name part of a qualified name or a non-empty label value:
/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn is_label_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    let edge_ok = |c: Option<&u8>| c.is_some_and(u8::is_ascii_alphanumeric);
    !b.is_empty()
        && b.len() <= 63
        && edge_ok(b.first())
        && edge_ok(b.last())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Whether `s` is a valid label (or selector) key: `[prefix/]name`.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_name_part(name),
        None => is_label_name_part(s),
    }
}

/// Whether `s` is a valid label (or selector) value; empty is allowed.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name_part(s)
}

/// Checks every key and value of a label map (labels or a selector) at
/// `field`: a bad key is reported at `field`, a bad value at `field[key]`.
pub(crate) fn check_labels<'a>(
    field: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), FieldError> {
    for (k, v) in labels {
        if !is_label_key(k) {
            return Err(FieldError::new(
                field,
                Problem::InvalidName {
                    value: k.clone(),
                    rule: NameRule::LabelKey,
                },
            ));
        }
        if !is_label_value(v) {
            return Err(FieldError::new(
                format!("{field}[{k}]"),
                Problem::InvalidName {
                    value: v.clone(),
                    rule: NameRule::LabelValue,
                },
            ));
        }
    }
    Ok(())
}

/// Checks `value` against `rule`, reporting `field` on failure.
pub(crate) fn check_name(field: &str, value: &str, rule: NameRule) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, Problem::Required));
    }
    let ok = match rule {
        NameRule::Dns1123Label => is_dns1123_label(value),
        NameRule::Dns1123Subdomain => is_dns1123_subdomain(value),
        NameRule::IanaServiceName => is_iana_svc_name(value),
        NameRule::EnvVarName => !value.contains('=') && !value.chars().any(char::is_control),
        NameRule::Dns1035Label => is_dns1035_label(value),
        NameRule::LabelKey => is_label_key(value),
        NameRule::LabelValue => is_label_value(value),
    };
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            Problem::InvalidName {
                value: value.into(),
                rule,
            },
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "web-a", "0", "a1-b2", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        assert!(is_dns1123_subdomain("node1.lab"));
        assert!(is_dns1123_subdomain("web-a"));
        assert!(!is_dns1123_subdomain("node1..lab"));
        assert!(!is_dns1123_subdomain(".a"));
        assert!(!is_dns1123_subdomain(&"a.".repeat(127)));
    }

    #[test]
    fn port_names() {
        for ok in ["http", "dns-tcp", "h2", "metrics9"] {
            assert!(is_iana_svc_name(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "a--b",
            "HTTP",
            "abcdefghijklmnop",
        ] {
            assert!(!is_iana_svc_name(bad), "{bad}");
        }
    }

    #[test]
    fn dns1035_labels() {
        assert!(is_dns1035_label("kube-dns"));
        assert!(is_dns1035_label("a1"));
        assert!(!is_dns1035_label("1a"));
        assert!(!is_dns1035_label("a.b"));
        assert!(!is_dns1035_label(""));
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "app",
            "App_Name.v2",
            "app.kubernetes.io/name",
            "example.com/x",
            &"a".repeat(63),
        ] {
            assert!(is_label_key(ok), "{ok}");
        }
        for bad in [
            "",
            "/app",
            "Example.com/app",
            "a/b/c",
            "-app",
            "app-",
            "a b",
            "example.com/",
            &"a".repeat(64),
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
        for ok in ["", "web", "v1.2_3-x", "A"] {
            assert!(is_label_value(ok), "{ok}");
        }
        for bad in ["-web", "web.", "a/b", "a b", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }

    #[test]
    fn label_map_errors_name_key_or_value() {
        let map =
            |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_string(), v.to_string())]);
        let e = check_labels("spec.selector", &map("bad key", "x")).unwrap_err();
        assert_eq!(e.field, "spec.selector");
        assert!(e
            .to_string()
            .contains("`bad key` is not valid: a label key"));
        let e = check_labels("spec.selector", &map("app", "-x")).unwrap_err();
        assert_eq!(e.field, "spec.selector[app]");
        assert!(e.to_string().contains("a label value"), "{e}");
        assert!(check_labels("spec.selector", &map("app", "")).is_ok());
    }

    #[test]
    fn messages_name_field_and_rule() {
        let e = check_name("metadata.name", "Web_A", NameRule::Dns1123Subdomain).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("metadata.name: `Web_A` is not valid"),
            "{text}"
        );
        assert!(text.contains("DNS-1123"), "{text}");
        let e = check_name("metadata.name", "", NameRule::Dns1123Subdomain).unwrap_err();
        assert_eq!(e.to_string(), "metadata.name: is required");
    }
}
