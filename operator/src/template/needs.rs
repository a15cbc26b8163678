//! What a template can read of its data, found from its parse tree, so that rendering
//! builds only those parts of the Go structs (a whole `corev1.PodSpec` with every zero
//! value is hundreds of maps; `{{ .PodSpec.ServiceAccountName }}` reads one string).
//!
//! The rule that keeps this exact: every expression that names data (`.A.B`, `$.A.B`)
//! needs the whole value at its path, so whatever a template does with the value (range
//! over it, bind it to a variable, hand it to `with`, `template` or a function) stays
//! within data that is there. Dot inside `with`, `range` and defined templates is such a
//! value. Only dot at the top level and a bare `$` are the data itself: they need all of
//! it. Rendering with the pruned data gives what rendering with all of it gives (tests
//! below compare both).

use std::collections::BTreeMap;

use gotmpl::parse::{Expr, ListNode, Node, PipeNode};

/// The parts of the template data one or more templates read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The data is used whole.
    all: bool,
    /// Per top-level key (`PodSpec`, `NodeMeta`, ...): what is read under it.
    keys: BTreeMap<String, Need>,
}

/// What is read of one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// All of it.
    Whole,
    /// Only these fields (Go names), each with what is read of it.
    Fields(BTreeMap<String, Need>),
}

impl Need {
    fn covers(&self, other: &Need) -> bool {
        match (self, other) {
            (Need::Whole, _) => true,
            (Need::Fields(_), Need::Whole) => false,
            (Need::Fields(mine), Need::Fields(theirs)) => theirs
                .iter()
                .all(|(field, need)| mine.get(field).is_some_and(|held| held.covers(need))),
        }
    }

    fn merge(&mut self, other: &Need) {
        match (&mut *self, other) {
            (Need::Whole, _) => {}
            (_, Need::Whole) => *self = Need::Whole,
            (Need::Fields(mine), Need::Fields(theirs)) => {
                for (field, need) in theirs {
                    match mine.get_mut(field) {
                        Some(held) => held.merge(need),
                        None => {
                            mine.insert(field.clone(), need.clone());
                        }
                    }
                }
            }
        }
    }
}

impl Needs {
    /// What `template` (its main tree and its defined templates) reads.
    pub fn of(template: &gotmpl::Template) -> Self {
        let mut needs = Self::default();
        let main = template.name();
        match template.lookup(main) {
            Some(tree) => needs.list(tree, true),
            // No tree under its own name: be safe rather than clever.
            None => needs.all = true,
        }
        for name in template.templates() {
            if name != main
                && let Some(tree) = template.lookup(name)
            {
                needs.list(tree, false);
            }
        }
        needs
    }

    /// All of the data (what rendering did before templates were analysed).
    #[cfg(test)]
    pub fn everything() -> Self {
        Self {
            all: true,
            keys: BTreeMap::new(),
        }
    }

    /// What is read under the top-level key `key`; `None`: nothing.
    pub fn key(&self, key: &str) -> Option<&Need> {
        if self.all {
            Some(&Need::Whole)
        } else {
            self.keys.get(key)
        }
    }

    /// Whether all of the data is read.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether everything `other` reads is read here too.
    pub fn covers(&self, other: &Needs) -> bool {
        self.all
            || (!other.all
                && other
                    .keys
                    .iter()
                    .all(|(key, need)| self.keys.get(key).is_some_and(|held| held.covers(need))))
    }

    /// Adds what `other` reads.
    pub fn merge(&mut self, other: &Needs) {
        self.all |= other.all;
        for (key, need) in &other.keys {
            match self.keys.get_mut(key) {
                Some(mine) => mine.merge(need),
                None => {
                    self.keys.insert(key.clone(), need.clone());
                }
            }
        }
    }

    /// Forgets what is read under top-level keys other than `keys`.
    pub fn retain_keys(&mut self, keys: &[&str]) {
        self.keys.retain(|key, _| keys.contains(&key.as_str()));
    }

    /// Adds the value at `path` (empty: all the data), whole.
    pub fn add(&mut self, path: &[impl AsRef<str>]) {
        let Some((key, rest)) = path.split_first() else {
            self.all = true;
            return;
        };
        let mut need = self
            .keys
            .entry(key.as_ref().to_owned())
            .or_insert_with(|| Need::Fields(BTreeMap::new()));
        if rest.is_empty() {
            *need = Need::Whole;
        }
        for (i, field) in rest.iter().enumerate() {
            let Need::Fields(fields) = need else {
                // Already whole: everything under it is there.
                return;
            };
            let last = i + 1 == rest.len();
            need = fields
                .entry(field.as_ref().to_owned())
                .or_insert_with(|| Need::Fields(BTreeMap::new()));
            if last {
                *need = Need::Whole;
            }
        }
    }

    /// `top`: dot is the data itself (the main tree outside `with` and `range`).
    fn list(&mut self, list: &ListNode, top: bool) {
        for node in &list.nodes {
            match node {
                Node::List(inner) => self.list(inner, top),
                Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
                Node::Action(action) => self.pipe(&action.pipe, top),
                Node::If(branch) => {
                    self.pipe(&branch.pipe, top);
                    self.list(&branch.body, top);
                    if let Some(else_body) = &branch.else_body {
                        self.list(else_body, top);
                    }
                }
                Node::With(branch) | Node::Range(branch) => {
                    self.pipe(&branch.pipe, top);
                    // Dot is now the pipeline's value, which the line above needs whole.
                    self.list(&branch.body, false);
                    if let Some(else_body) = &branch.else_body {
                        self.list(else_body, top);
                    }
                }
                Node::Template(call) => {
                    if let Some(pipe) = &call.pipe {
                        self.pipe(pipe, top);
                    }
                }
                Node::Define(define) => self.list(&define.body, false),
            }
        }
    }

    fn pipe(&mut self, pipe: &PipeNode, top: bool) {
        for command in &pipe.commands {
            for arg in &command.args {
                self.expr(arg, top);
            }
        }
    }

    fn expr(&mut self, expr: &Expr, top: bool) {
        match expr {
            Expr::Dot(_) if top => self.all = true,
            // Relative to a dot that is not the data, a field path names no top-level
            // key; adding it anyway only ever adds data.
            Expr::Field(_, path) => self.add(path),
            Expr::Variable(_, name, path) if name == "$" => self.add(path),
            Expr::Pipe(_, pipe) => self.pipe(pipe, top),
            Expr::Chain(_, inner, _) => self.expr(inner, top),
            // Other variables hold values of pipelines seen here; the rest is no data.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(source: &str) -> Needs {
        Needs::of(&gotmpl::Template::new("t").parse(source).unwrap())
    }

    fn fields(entries: &[(&str, Need)]) -> Need {
        Need::Fields(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn field_paths_need_only_their_ends() {
        let n = needs(
            "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
        );
        assert!(!n.all);
        assert_eq!(n.key("TrustDomain"), Some(&Need::Whole));
        assert_eq!(
            n.key("PodMeta"),
            Some(&fields(&[("Namespace", Need::Whole)]))
        );
        assert_eq!(
            n.key("PodSpec"),
            Some(&fields(&[("ServiceAccountName", Need::Whole)]))
        );
        assert_eq!(n.key("NodeSpec"), None);
    }

    #[test]
    fn a_shorter_path_takes_the_whole_value() {
        let n = needs("{{ .PodMeta.Labels.app }}{{ with .PodMeta }}{{ .Name }}{{ end }}");
        assert_eq!(n.key("PodMeta"), Some(&Need::Whole));
        let n = needs("{{ with .PodMeta }}{{ .Name }}{{ end }}{{ .PodMeta.Labels.app }}");
        assert_eq!(n.key("PodMeta"), Some(&Need::Whole));
    }

    #[test]
    fn merged_needs_read_what_each_reads() {
        let mut n = needs("{{ .PodMeta.Name }}{{ .PodSpec.SecurityContext.RunAsUser }}");
        n.merge(&needs(
            "{{ .PodMeta.Labels.app }}{{ .PodSpec.SecurityContext }}",
        ));
        n.merge(&needs("{{ .NodeMeta.Name }}"));
        assert_eq!(
            n.key("PodMeta"),
            Some(&fields(&[
                ("Labels", fields(&[("app", Need::Whole)])),
                ("Name", Need::Whole)
            ]))
        );
        assert_eq!(
            n.key("PodSpec"),
            Some(&fields(&[("SecurityContext", Need::Whole)])),
            "a whole value absorbs a path under it"
        );
        assert_eq!(n.key("NodeMeta"), Some(&fields(&[("Name", Need::Whole)])));
        n.merge(&needs("{{ . }}"));
        assert_eq!(n.key("NodeSpec"), Some(&Need::Whole), "all of it");
    }

    #[test]
    fn covering_needs() {
        let wide = needs("{{ .PodMeta.Labels }}{{ .PodSpec.SecurityContext.RunAsUser }}");
        for narrower in [
            "{{ .PodMeta.Labels.app }}",
            "{{ .PodMeta.Labels }}{{ .PodSpec.SecurityContext.RunAsUser }}",
            "text only",
        ] {
            assert!(wide.covers(&needs(narrower)), "{narrower}");
        }
        for wider in [
            "{{ .PodMeta.Name }}",
            "{{ .PodSpec.SecurityContext }}",
            "{{ .PodSpec.SecurityContext.RunAsGroup }}",
            "{{ .NodeMeta.Name }}",
            "{{ . }}",
        ] {
            assert!(!wide.covers(&needs(wider)), "{wider}");
        }
        assert!(needs("{{ $ }}").covers(&needs("{{ . }}{{ .PodSpec }}")));
    }

    #[test]
    fn dot_and_dollar_at_the_top_need_everything() {
        for source in [
            "{{ . }}",
            "{{ index . \"PodSpec\" }}",
            "{{ with .PodMeta }}{{ $ }}{{ end }}",
            "{{ define \"x\" }}{{ .Name }}{{ end }}{{ template \"x\" . }}",
            "{{ printf \"%v\" (.) }}",
        ] {
            assert!(needs(source).all, "{source}");
        }
        for source in [
            "{{ with .PodMeta.Labels }}{{ . }}{{ end }}",
            "{{ range .PodSpec.Containers }}{{ . }}{{ end }}",
            "{{ define \"x\" }}{{ . }}{{ end }}{{ template \"x\" .PodMeta }}",
        ] {
            assert!(!needs(source).all, "{source}");
        }
    }
}
