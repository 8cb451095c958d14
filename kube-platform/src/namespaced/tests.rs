use super::*;

#[test]
fn targets_name_their_namespace_and_the_default_one_reads_as_before() {
    assert_eq!(
        split("namespace/shop/deployment/api"),
        (Some("shop"), "deployment/api")
    );
    assert_eq!(split("deployment/api"), (None, "deployment/api"));
    assert_eq!(qualify("shop", "pod/x"), "namespace/shop/pod/x");
    assert_eq!(
        canonical("namespace/shop/deploy/api", Some("default")).unwrap(),
        (
            "namespace/shop/deployment/api".to_owned(),
            Some("shop".to_owned())
        )
    );
    assert_eq!(
        canonical(
            "namespace/default/deploy/api/container/app",
            Some("default")
        )
        .unwrap(),
        (
            "deployment/api/container/app".to_owned(),
            Some("default".to_owned())
        )
    );
    assert_eq!(
        canonical("deployment/api", Some("default")).unwrap(),
        ("deployment/api".to_owned(), None)
    );
    for bad in [
        "namespace/Shop/pod/x",
        "namespace/-a/pod/x",
        "namespace//pod/x",
    ] {
        assert!(canonical(bad, None).is_err(), "{bad}");
    }
    assert!(canonical("namespace/shop/widget/x", None).is_err());
}
