//! The catalog against real files in a temporary directory.

use std::path::Path;

use super::catalog::Catalog;
use super::manifest::{self, ManifestError};
use crate::webhook::Validator;

fn validator() -> Validator {
    Validator {
        trust_domain: "example.org".into(),
        class_name: None,
    }
}

fn entry(name: &str, id: &str) -> String {
    format!(
        "apiVersion: spire.spiffe.io/v1alpha1\nkind: ClusterStaticEntry\nmetadata:\n  name: {name}\n\
         spec:\n  spiffeID: spiffe://example.org/{id}\n  parentID: spiffe://example.org/node\n  \
         selectors: [\"unix:uid:1000\"]\n"
    )
}

fn federation(name: &str) -> String {
    format!(
        "apiVersion: spire.spiffe.io/v1alpha1\nkind: ClusterFederatedTrustDomain\nmetadata:\n  name: {name}\n\
         spec:\n  trustDomain: other.org\n  bundleEndpointURL: https://other.org:8443\n  \
         bundleEndpointProfile: {{type: https_web}}\n"
    )
}

fn ids(catalog: &Catalog) -> Vec<String> {
    let (statics, federations) = catalog.objects();
    statics
        .iter()
        .map(|o| o.spec.spiffe_id.clone())
        .chain(federations.iter().map(|o| o.spec.trust_domain.clone()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn reads_both_kinds_and_only_yaml_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &entry("a", "a"));
    write(dir.path(), "fed.yaml", &federation("fed"));
    write(dir.path(), "b.yml", &entry("b", "b"));
    write(dir.path(), "notes.txt", "hello");
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let mut c = Catalog::new(dir.path().into(), false, validator());
    let scan = c.scan();
    assert!(scan.changed && scan.new_errors.is_empty(), "{scan:?}");
    assert_eq!(ids(&c), ["spiffe://example.org/a", "other.org"]);
    assert!(!c.scan().changed, "nothing changed");
}

#[test]
fn a_bad_version_keeps_the_last_valid_one_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &entry("a", "a"));
    let mut c = Catalog::new(dir.path().into(), false, validator());
    c.scan();
    let bad = entry("a", "a").replace("unix:uid:1000", "no-colon");
    write(dir.path(), "a.yaml", &bad);
    let scan = c.scan();
    assert!(!scan.changed);
    assert_eq!(scan.new_errors.len(), 1);
    let message = scan.new_errors[0].1.to_string();
    assert!(
        message.contains("ClusterStaticEntry \"a\"") && message.contains("no-colon"),
        "{message}"
    );
    assert_eq!(ids(&c), ["spiffe://example.org/a"], "kept");
    assert_eq!(c.invalid_files(), 1);
    assert!(c.scan().new_errors.is_empty(), "reported once");
    // Fixed with a new ID: that one is used.
    write(dir.path(), "a.yaml", &entry("a", "a2"));
    assert!(c.scan().changed);
    assert_eq!(ids(&c), ["spiffe://example.org/a2"]);
    assert_eq!(c.invalid_files(), 0);
}

#[test]
fn a_new_bad_file_declares_nothing_and_disturbs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &entry("a", "a"));
    write(dir.path(), "b.yaml", "kind: [unclosed");
    write(
        dir.path(),
        "c.yaml",
        &entry("c", "c").replace("ClusterStaticEntry", "ClusterSPIFFEID"),
    );
    write(
        dir.path(),
        "d.yaml",
        &entry("d", "d").replace("v1alpha1", "v1"),
    );
    write(
        dir.path(),
        "e.yaml",
        &entry("e", "e").replace("example.org/e", "elsewhere.org/e"),
    );
    let mut c = Catalog::new(dir.path().into(), false, validator());
    let scan = c.scan();
    assert_eq!(ids(&c), ["spiffe://example.org/a"]);
    let errors: Vec<String> = scan.new_errors.iter().map(|(_, e)| e.to_string()).collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].starts_with("is not one YAML document"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("kind: \"ClusterSPIFFEID\""),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("apiVersion: \"spire.spiffe.io/v1\""),
        "{errors:?}"
    );
    assert!(
        errors[3].contains("spec.spiffeID") && errors[3].contains("elsewhere.org"),
        "{errors:?}"
    );
}

#[test]
fn a_removed_file_withdraws_and_an_unreadable_directory_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "a.yaml", &entry("a", "a"));
    write(&manifests, "b.yaml", &entry("b", "b"));
    let mut c = Catalog::new(manifests.clone(), false, validator());
    c.scan();
    std::fs::remove_file(manifests.join("b.yaml")).unwrap();
    assert!(c.scan().changed);
    assert_eq!(ids(&c), ["spiffe://example.org/a"]);
    std::fs::rename(&manifests, dir.path().join("elsewhere")).unwrap();
    assert!(!c.scan().changed, "a missing directory changes nothing");
    assert_eq!(ids(&c), ["spiffe://example.org/a"]);
}

#[test]
fn a_second_file_with_the_same_name_is_refused_until_the_first_goes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &entry("same", "a"));
    write(dir.path(), "b.yaml", &entry("same", "b"));
    let mut c = Catalog::new(dir.path().into(), false, validator());
    let scan = c.scan();
    assert!(matches!(
        scan.new_errors[0].1,
        ManifestError::Duplicate { .. }
    ));
    assert_eq!(ids(&c), ["spiffe://example.org/a"]);
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    assert!(c.scan().changed);
    assert_eq!(ids(&c), ["spiffe://example.org/b"]);
}

#[test]
fn a_config_map_volume_is_read_once_and_its_symlink_swap_is_seen() {
    // kubelet's layout: ..<ts>/ holds the files, ..data -> ..<ts>, key -> ..data/key.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_01_01")).unwrap();
    write(&root.join("..2026_01_01"), "a.yaml", &entry("a", "v1"));
    std::os::unix::fs::symlink("..2026_01_01", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/a.yaml", root.join("a.yaml")).unwrap();
    let listed = manifest::list(root).unwrap();
    assert_eq!(listed, [root.join("a.yaml")]);
    let mut c = Catalog::new(root.into(), false, validator());
    c.scan();
    assert_eq!(ids(&c), ["spiffe://example.org/v1"]);
    // The update: a new timestamped dir, then ..data swapped by rename.
    std::fs::create_dir(root.join("..2026_01_02")).unwrap();
    write(&root.join("..2026_01_02"), "a.yaml", &entry("a", "v2"));
    std::os::unix::fs::symlink("..2026_01_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    assert!(c.scan().changed);
    assert_eq!(ids(&c), ["spiffe://example.org/v2"]);
}

#[test]
fn environment_variables_expand_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: no other test reads this variable.
    unsafe { std::env::set_var("STATIC_MODE_TEST_ID", "from-env") };
    write(dir.path(), "a.yaml", &entry("a", "${STATIC_MODE_TEST_ID}"));
    write(
        dir.path(),
        "b.yaml",
        &entry("b", "x$STATIC_MODE_TEST_UNSET"),
    );
    let mut c = Catalog::new(dir.path().into(), true, validator());
    c.scan();
    // Unset variables become empty, as Go's os.ExpandEnv.
    assert_eq!(
        ids(&c),
        ["spiffe://example.org/from-env", "spiffe://example.org/x"]
    );
    let mut c = Catalog::new(dir.path().into(), false, validator());
    let scan = c.scan();
    assert_eq!(ids(&c), Vec::<String>::new());
    assert_eq!(scan.new_errors.len(), 2, "{scan:?}");
}

#[test]
fn with_a_state_dir_a_file_invalid_at_restart_keeps_its_last_valid_version() {
    let (dir, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let saved = || super::saved::Saved::open(state.path()).unwrap();
    write(dir.path(), "a.yaml", &entry("a", "a"));
    write(dir.path(), "b.yaml", &entry("b", "b"));
    let mut first = Catalog::new(dir.path().into(), false, validator()).with_saved(saved());
    first.scan();
    drop(first);
    // While the operator is down: a.yaml breaks, b.yaml goes.
    write(dir.path(), "a.yaml", "kind: [broken");
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let mut restarted = Catalog::new(dir.path().into(), false, validator()).with_saved(saved());
    let scan = restarted.scan();
    assert!(scan.changed && scan.new_errors.len() == 1, "{scan:?}");
    assert_eq!(ids(&restarted), ["spiffe://example.org/a"]);
    let kept: Vec<_> = std::fs::read_dir(state.path().join("static-manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept, ["a.yaml"], "b.yaml's copy is forgotten");
    // Without the state dir the broken file declares nothing.
    let mut bare = Catalog::new(dir.path().into(), false, validator());
    bare.scan();
    assert!(ids(&bare).is_empty());
}
