//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), evaluated locally.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector that cannot match anything meaningful: an unknown operator or a value
/// list that contradicts the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The operator is not In, NotIn, Exists or DoesNotExist.
    #[error(
        "matchExpressions[{index}].operator: {operator:?} is not In, NotIn, Exists or DoesNotExist"
    )]
    Operator {
        /// Position in `matchExpressions`.
        index: usize,
        /// The operator given.
        operator: String,
    },
    /// In / NotIn without values, or Exists / DoesNotExist with values.
    #[error("matchExpressions[{index}].values: {message}")]
    Values {
        /// Position in `matchExpressions`.
        index: usize,
        /// What is wrong.
        message: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector. `None` in the spec means "everything", which
/// [`Selector::everything`] represents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses an optional selector as Kubernetes does: absent selects everything, and an
    /// empty selector (`{}`) selects everything too.
    pub fn parse(selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        let Some(selector) = selector else {
            return Ok(Self::everything());
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(key.clone(), [value.clone()].into()));
        }
        for (index, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let key = expr.key.clone();
            let needs_values =
                |values: BTreeSet<String>, wrap: fn(String, BTreeSet<String>) -> Requirement| {
                    if values.is_empty() {
                        Err(SelectorError::Values {
                            index,
                            message: "must be non-empty for In and NotIn",
                        })
                    } else {
                        Ok(wrap(key.clone(), values))
                    }
                };
            let requirement = match expr.operator.as_str() {
                "In" => needs_values(values, Requirement::In)?,
                "NotIn" => needs_values(values, Requirement::NotIn)?,
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::Values {
                        index,
                        message: "must be empty for Exists and DoesNotExist",
                    });
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(SelectorError::Operator {
                        index,
                        operator: other.to_owned(),
                    });
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether an object with `labels` is selected.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.matches_labels(|key| labels?.get(key).map(String::as_str))
    }

    /// Whether the labels `get` looks up (key to value) match.
    pub fn matches_labels<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(key, values) => get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => !get(key).is_some_and(|v| values.contains(v)),
            Requirement::Exists(key) => get(key).is_some(),
            Requirement::DoesNotExist(key) => get(key).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).into()).collect()),
        }
    }

    #[test]
    fn selects_like_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let cases: Vec<(&str, Option<LabelSelector>, bool, bool)> = vec![
            ("absent selects all", None, true, true),
            (
                "empty selects all",
                Some(LabelSelector::default()),
                true,
                true,
            ),
            (
                "matchLabels",
                Some(LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                }),
                true,
                false,
            ),
            (
                "In",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("app", "In", &["db", "cache"])]),
                    ..Default::default()
                }),
                false,
                true,
            ),
            (
                "NotIn matches a missing label",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "NotIn", &["back"])]),
                    ..Default::default()
                }),
                true,
                true,
            ),
            (
                "Exists",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "Exists", &[])]),
                    ..Default::default()
                }),
                true,
                false,
            ),
            (
                "DoesNotExist",
                Some(LabelSelector {
                    match_expressions: Some(vec![expr("tier", "DoesNotExist", &[])]),
                    ..Default::default()
                }),
                false,
                true,
            ),
        ];
        for (name, selector, want_web, want_db) in cases {
            let s = Selector::parse(selector.as_ref()).unwrap();
            assert_eq!(s.matches(Some(&web)), want_web, "{name}: web");
            assert_eq!(s.matches(Some(&db)), want_db, "{name}: db");
        }
    }

    #[test]
    fn malformed_expressions_name_their_position() {
        let bad = LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &[]), expr("b", "Equals", &["x"])]),
            ..Default::default()
        };
        let err = Selector::parse(Some(&bad)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "matchExpressions[1].operator: \"Equals\" is not In, NotIn, Exists or DoesNotExist"
        );
        let empty_in = LabelSelector {
            match_expressions: Some(vec![expr("a", "In", &[])]),
            ..Default::default()
        };
        assert!(Selector::parse(Some(&empty_in)).is_err());
    }
}
