//! Label selectors (`metav1.LabelSelector`): which objects a NetworkPolicy
//! applies to and which peers its rules admit.
//!
//! Semantics, as `k8s.io/apimachinery/pkg/apis/meta/v1` and
//! `pkg/labels` define them:
//!
//! - `matchLabels` and `matchExpressions` are ANDed: an object matches when
//!   every pair and every expression holds.
//! - The empty selector (`{}`, neither field set) matches every object. (An
//!   *absent* selector is a different thing; where that matters, as in a
//!   NetworkPolicy peer, the field is an `Option<LabelSelector>`.)
//! - `In`: the key is present and its value is one of `values`.
//!   `NotIn`: the key is absent, or present with a value not in `values`
//!   (so `NotIn` on a missing key matches). `Exists`: the key is present
//!   (any value, even empty). `DoesNotExist`: the key is absent.
//!
//! Validation follows `ValidateLabelSelector`: keys are qualified names,
//! `matchLabels` values label values, `In`/`NotIn` need at least one value,
//! `Exists`/`DoesNotExist` take none, and each value is a label value.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::null_default;
use crate::validate::{check_labels, check_name, FieldError, NameRule, Problem};

/// A label selector: `matchLabels` AND `matchExpressions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Every pair must be a label of the object.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
    /// Every requirement must hold.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    /// The label key the requirement is about.
    pub key: String,
    /// How the key's value is compared with `values`.
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`; empty for the other operators.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub values: Vec<String>,
}

/// `matchExpressions[].operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl fmt::Display for SelectorOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SelectorOperator::In => "In",
            SelectorOperator::NotIn => "NotIn",
            SelectorOperator::Exists => "Exists",
            SelectorOperator::DoesNotExist => "DoesNotExist",
        })
    }
}

impl LabelSelectorRequirement {
    /// Whether an object with `labels` meets this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    /// A selector of exactly these labels (`matchLabels` only).
    pub fn from_labels<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            match_labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether the selector is `{}`, which selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether an object with `labels` is selected: every `matchLabels`
    /// pair is present and every expression holds; `{}` selects all.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Checks keys, values and operator rules; errors name the field under
    /// `field` (`spec.podSelector.matchExpressions[0].values`).
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        check_labels(&format!("{field}.matchLabels"), &self.match_labels)?;
        for (i, r) in self.match_expressions.iter().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            check_name(&format!("{at}.key"), &r.key, NameRule::LabelKey)?;
            match r.operator {
                SelectorOperator::In | SelectorOperator::NotIn if r.values.is_empty() => {
                    return Err(FieldError::new(
                        format!("{at}.values"),
                        Problem::RequiredWhen {
                            condition: "(at least one value) when the operator is In or NotIn",
                        },
                    ));
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !r.values.is_empty() =>
                {
                    return Err(FieldError::new(
                        format!("{at}.values"),
                        Problem::Invalid {
                            value: r.values.join(","),
                            reason: format!("must be empty when the operator is {}", r.operator),
                        },
                    ));
                }
                _ => {}
            }
            for (j, v) in r.values.iter().enumerate() {
                if !crate::validate::is_label_value(v) {
                    return Err(FieldError::new(
                        format!("{at}.values[{j}]"),
                        Problem::InvalidName {
                            value: v.clone(),
                            rule: NameRule::LabelValue,
                        },
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for LabelSelector {
    /// kubectl's spelling: `app=web,tier in (a,b),!legacy`; `<none>` for
    /// `{}` (which selects all).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("<none>");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                SelectorOperator::Exists => r.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
#[path = "selector_tests.rs"]
mod tests;
