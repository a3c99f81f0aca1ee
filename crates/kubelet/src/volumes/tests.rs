use super::*;

#[test]
fn sub_path_expr_references_must_be_set_and_not_empty() {
    let env = [
        ("POD".to_owned(), "p1".to_owned()),
        ("EMPTY".to_owned(), String::new()),
    ];
    assert!(missing_references("logs/$(POD)", &env).is_empty());
    assert!(missing_references("logs/$$(NOPE)", &env).is_empty());
    assert_eq!(
        missing_references("$(Z)/$(EMPTY)/$(POD)/$(Z)", &env),
        ["EMPTY", "Z"]
    );
}

#[test]
fn empty_dir_size_limits_are_exact_and_never_vanish() {
    let limit = |q: &str| {
        size_limit(&EmptyDirVolumeSource {
            size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                q.to_owned(),
            )),
            ..EmptyDirVolumeSource::default()
        })
    };
    // Was no limit with the old parser.
    let milli = limit("67108864500m").expect("valid").expect("a limit");
    assert!(Quantity::from(67_108_865u64) > milli);
    assert!(Quantity::from(67_108_864u64) <= milli);
    assert_eq!(limit("0"), Ok(None));
    assert!(limit("lots").is_err());
    assert!(limit("-1Mi").is_err());
    assert_eq!(size_limit(&EmptyDirVolumeSource::default()), Ok(None));
}

#[test]
fn sub_paths_must_be_plain_relative() {
    assert!(plain_relative("a/b"));
    assert!(!plain_relative("../a"));
    assert!(!plain_relative("a/../../b"));
    assert!(!plain_relative("/etc"));
}
