use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn selectors_match_as_kubernetes_label_selectors_do() {
    let req = |key: &str, operator, values: &[&str]| LabelRequirement {
        key: key.into(),
        operator,
        values: values.iter().map(|s| (*s).to_owned()).collect(),
    };
    let selector = LabelSelector {
        match_labels: labels(&[("tier", "payments")]),
        match_expressions: vec![
            req("env", LabelOperator::In, &["staging", "qa"]),
            req("canary", LabelOperator::DoesNotExist, &[]),
            req("team", LabelOperator::NotIn, &["sre"]),
        ],
    };
    let yes = labels(&[("tier", "payments"), ("env", "qa"), ("team", "web")]);
    assert!(selector.matches(&yes));
    assert!(selector.matches(&labels(&[("tier", "payments"), ("env", "staging")])));
    for no in [
        labels(&[("tier", "web"), ("env", "qa")]),
        labels(&[("tier", "payments")]),
        labels(&[("tier", "payments"), ("env", "prod")]),
        labels(&[("tier", "payments"), ("env", "qa"), ("canary", "")]),
        labels(&[("tier", "payments"), ("env", "qa"), ("team", "sre")]),
    ] {
        assert!(!selector.matches(&no), "{no:?}");
    }
    let exists = LabelSelector {
        match_expressions: vec![req("pci", LabelOperator::Exists, &[])],
        ..LabelSelector::default()
    };
    assert!(exists.matches(&labels(&[("pci", "")])));
    assert!(!exists.matches(&labels(&[])));
    assert!(LabelSelector::default().matches(&labels(&[])));
}
