//! Truth tables of label selector matching, and its validation.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    }
}

#[test]
fn empty_selector_matches_everything() {
    let all = LabelSelector::default();
    assert!(all.is_empty());
    assert!(all.matches(&labels(&[])));
    assert!(all.matches(&labels(&[("app", "web")])));
}

#[test]
fn match_labels_needs_every_pair() {
    let sel = LabelSelector::from_labels([("app", "web"), ("tier", "front")]);
    assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
    assert!(!sel.matches(&labels(&[("app", "web")])));
    assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back")])));
    assert!(!sel.matches(&labels(&[])));
}

#[test]
fn operator_truth_table() {
    use SelectorOperator::*;
    let missing = labels(&[("other", "x")]);
    let a = labels(&[("env", "a")]);
    let c = labels(&[("env", "c")]);
    let empty_value = labels(&[("env", "")]);
    // (selector, [missing, env=a, env=c, env=""])
    let table = [
        (expr("env", In, &["a", "b"]), [false, true, false, false]),
        (expr("env", NotIn, &["a", "b"]), [true, false, true, true]),
        (expr("env", Exists, &[]), [false, true, true, true]),
        (expr("env", DoesNotExist, &[]), [true, false, false, false]),
        (expr("env", In, &[""]), [false, false, false, true]),
    ];
    for (sel, want) in table {
        let got = [&missing, &a, &c, &empty_value].map(|l| sel.matches(l));
        assert_eq!(got, want, "{sel}");
    }
}

#[test]
fn labels_and_expressions_are_anded() {
    let mut sel = expr("env", SelectorOperator::NotIn, &["prod"]);
    sel.match_labels = labels(&[("app", "web")]);
    assert!(sel.matches(&labels(&[("app", "web")])));
    assert!(sel.matches(&labels(&[("app", "web"), ("env", "dev")])));
    assert!(!sel.matches(&labels(&[("app", "web"), ("env", "prod")])));
    assert!(!sel.matches(&labels(&[("env", "dev")])));
    // Two expressions: both must hold.
    sel.match_expressions.push(LabelSelectorRequirement {
        key: "team".into(),
        operator: SelectorOperator::Exists,
        values: vec![],
    });
    assert!(!sel.matches(&labels(&[("app", "web")])));
    assert!(sel.matches(&labels(&[("app", "web"), ("team", "x")])));
}

#[test]
fn validation_names_the_field() {
    use SelectorOperator::*;
    let e = expr("env", In, &[])
        .validate("spec.podSelector")
        .unwrap_err();
    assert_eq!(e.field, "spec.podSelector.matchExpressions[0].values");
    let e = expr("env", Exists, &["a"])
        .validate("spec.podSelector")
        .unwrap_err();
    assert_eq!(e.field, "spec.podSelector.matchExpressions[0].values");
    assert!(e.to_string().contains("must be empty"), "{e}");
    let e = expr("bad key", Exists, &[]).validate("sel").unwrap_err();
    assert_eq!(e.field, "sel.matchExpressions[0].key");
    let e = expr("env", NotIn, &["ok", "-bad"])
        .validate("sel")
        .unwrap_err();
    assert_eq!(e.field, "sel.matchExpressions[0].values[1]");
    let e = LabelSelector::from_labels([("app", "-x")])
        .validate("sel")
        .unwrap_err();
    assert_eq!(e.field, "sel.matchLabels[app]");
    assert!(expr("env", NotIn, &["a"]).validate("sel").is_ok());
    assert!(expr("env", DoesNotExist, &[]).validate("sel").is_ok());
}

#[test]
fn decodes_operators_and_rejects_unknown() {
    let sel: LabelSelector = serde_yaml::from_str(
        "matchLabels: {app: web}\nmatchExpressions:\n- {key: env, operator: NotIn, values: [prod]}\n",
    )
    .unwrap();
    assert_eq!(sel.to_string(), "app=web,env notin (prod)");
    let err = serde_yaml::from_str::<LabelSelector>(
        "matchExpressions:\n- {key: env, operator: Equals, values: [a]}\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("Equals"), "{err}");
}
