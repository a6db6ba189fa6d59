//! Scope names: State Backed's catalogue, the one alias it has, and the set logic that decides
//! whether a key may use a route.
//!
//! Scopes are compared as canonical strings. `org.keys.write` (the spelling of State Backed's
//! API and CLI) is folded into `org-keys.write` (the docs' spelling) wherever a scope enters
//! the gateway — config, key files, token claims — so every later comparison is plain equality.

use std::collections::BTreeSet;
use std::sync::Arc;

/// Every scope State Backed's API knows, in its canonical spelling.
pub const BUILTIN_SCOPES: &[&str] = &[
    // use = production
    "events.write",
    "state.read",
    "instances.write",
    "indexes.read",
    // use = ci
    "machines.read",
    "machines.write",
    "machine-versions.read",
    "machine-versions.write",
    // use = admin
    "org.write",
    "org-keys.write",
    "org-members.write",
    // the rest of the API
    "events.read",
    "instances.read",
    "instances.admin",
    "machines.admin",
    "analytics.read",
    "org.read",
    "logs.read",
    "tokens.admin",
];

/// The scope that lets a key create keys, and therefore impersonate end users.
pub const ORG_KEYS_WRITE: &str = "org-keys.write";

/// Returns the canonical spelling of a scope name.
pub fn canonical(name: &str) -> &str {
    if name == "org.keys.write" {
        ORG_KEYS_WRITE
    } else {
        name
    }
}

/// The scopes granted by each key "use", as State Backed's docs group them.
pub fn scopes_for_use(key_use: KeyUse) -> &'static [&'static str] {
    match key_use {
        KeyUse::Production => &BUILTIN_SCOPES[0..4],
        KeyUse::Ci => &BUILTIN_SCOPES[4..8],
        KeyUse::Admin => &BUILTIN_SCOPES[8..11],
    }
}

/// What a key is for; each use grants a fixed group of scopes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyUse {
    Production,
    Ci,
    Admin,
}

/// The scope names a deployment accepts: the built-in catalogue plus the config's extras.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    names: BTreeSet<Arc<str>>,
}

impl Catalog {
    pub fn new<'a>(extra: impl IntoIterator<Item = &'a str>) -> Self {
        let names = BUILTIN_SCOPES
            .iter()
            .copied()
            .chain(extra.into_iter().map(canonical))
            .map(Arc::from)
            .collect();
        Catalog { names }
    }

    /// The shared, canonical name of a scope, or `None` when it is not declared.
    pub fn resolve(&self, name: &str) -> Option<Arc<str>> {
        self.names.get(canonical(name)).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(canonical(name))
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new([])
    }
}

/// A small sorted set of canonical scope names.
///
/// Keys hold a handful of scopes and routes require one or two, so a sorted boxed slice
/// beats a hash set on every count that matters here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Box<[Arc<str>]>);

impl ScopeSet {
    pub fn from_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        // Sorted and deduplicated in place: what a BTreeSet would give, without its nodes
        // (a token's `scope` claim builds one of these on every request).
        let mut set: Vec<Arc<str>> = names
            .into_iter()
            .map(|n| Arc::from(canonical(n.as_ref())))
            .collect();
        set.sort_unstable();
        set.dedup();
        ScopeSet(set.into_boxed_slice())
    }

    pub fn contains(&self, name: &str) -> bool {
        let name = canonical(name);
        self.0.binary_search_by(|s| (**s).cmp(name)).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }

    /// The scopes of `self` that `other` also holds.
    pub fn intersect(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(
            self.0
                .iter()
                .filter(|s| other.contains(s))
                .cloned()
                .collect(),
        )
    }

    /// The scopes of `self` that `holder` lacks, in order.
    pub fn missing_from<'a>(&'a self, holder: &'a ScopeSet) -> impl Iterator<Item = &'a str> {
        self.iter().filter(move |s| !holder.contains(s))
    }

    pub fn is_subset_of(&self, holder: &ScopeSet) -> bool {
        self.missing_from(holder).next().is_none()
    }

    /// Space-separated, as OAuth writes scope lists (RFC 6749 §3.3).
    pub fn joined(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_is_folded_everywhere() {
        let set = ScopeSet::from_names(["org.keys.write"]);
        assert!(set.contains("org-keys.write"));
        assert!(set.contains("org.keys.write"));
        assert_eq!(set.joined(), "org-keys.write");
        assert!(Catalog::default().contains("org.keys.write"));
    }

    #[test]
    fn intersection_and_missing() {
        let key = ScopeSet::from_names(["state.read", "events.write", "indexes.read"]);
        let token = ScopeSet::from_names(["state.read", "machines.write"]);
        let effective = key.intersect(&token);
        assert_eq!(effective.joined(), "state.read");
        let required = ScopeSet::from_names(["events.write", "state.read"]);
        assert_eq!(
            required.missing_from(&effective).collect::<Vec<_>>(),
            ["events.write"]
        );
        assert!(required.is_subset_of(&key));
        assert!(!required.is_subset_of(&effective));
    }

    #[test]
    fn uses_group_the_documented_scopes() {
        assert_eq!(
            scopes_for_use(KeyUse::Production),
            [
                "events.write",
                "state.read",
                "instances.write",
                "indexes.read"
            ]
        );
        assert_eq!(scopes_for_use(KeyUse::Admin)[1], "org-keys.write");
        assert_eq!(scopes_for_use(KeyUse::Ci).len(), 4);
    }

    #[test]
    fn undeclared_scopes_are_not_in_the_catalog() {
        let catalog = Catalog::new(["billing.read"]);
        assert!(catalog.contains("billing.read"));
        assert!(!catalog.contains("billing.write"));
        assert!(catalog.resolve("state.read").is_some());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Built-in names (both spellings of the alias among them) and made-up ones.
        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => prop::sample::select(BUILTIN_SCOPES.to_vec()).prop_map(str::to_owned),
                2 => Just("org.keys.write".to_owned()),
                1 => "[a-z]{1,6}(\\.[a-z-]{1,6}){0,2}",
            ]
        }

        fn names() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(name(), 0..8)
        }

        /// The other spelling of the alias, for names that have one.
        fn respell(n: &str) -> String {
            match n {
                "org.keys.write" => ORG_KEYS_WRITE.to_owned(),
                ORG_KEYS_WRITE => "org.keys.write".to_owned(),
                other => other.to_owned(),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn intersection_is_a_subset_of_both(a in names(), b in names()) {
                let (a, b) = (ScopeSet::from_names(&a), ScopeSet::from_names(&b));
                let both = a.intersect(&b);
                prop_assert!(both.is_subset_of(&a));
                prop_assert!(both.is_subset_of(&b));
                prop_assert_eq!(&both, &b.intersect(&a));
                // Nothing that both hold is lost.
                for s in a.iter().filter(|s| b.contains(s)) {
                    prop_assert!(both.contains(s));
                }
            }

            #[test]
            fn missing_is_empty_iff_subset(a in names(), b in names()) {
                let (a, b) = (ScopeSet::from_names(&a), ScopeSet::from_names(&b));
                let missing: Vec<&str> = a.missing_from(&b).collect();
                prop_assert_eq!(missing.is_empty(), a.is_subset_of(&b));
                prop_assert_eq!(missing.is_empty(), a.iter().all(|s| b.contains(s)));
                for s in &missing {
                    prop_assert!(a.contains(s) && !b.contains(s));
                }
                prop_assert!(a.intersect(&b).is_subset_of(&b));
            }

            #[test]
            fn the_alias_is_the_same_scope_everywhere(a in names(), b in names()) {
                let respelled: Vec<String> = a.iter().map(|n| respell(n)).collect();
                let set = ScopeSet::from_names(&a);
                prop_assert_eq!(&set, &ScopeSet::from_names(&respelled));
                prop_assert!(!set.joined().contains("org.keys.write"));
                let other = ScopeSet::from_names(&b);
                let other_respelled = ScopeSet::from_names(b.iter().map(|n| respell(n)));
                prop_assert_eq!(set.intersect(&other), set.intersect(&other_respelled));
                prop_assert_eq!(set.is_subset_of(&other), set.is_subset_of(&other_respelled));
                let catalog = Catalog::new(b.iter().map(String::as_str));
                for n in &a {
                    prop_assert_eq!(set.contains(n), set.contains(&respell(n)));
                    prop_assert_eq!(catalog.contains(n), catalog.contains(&respell(n)));
                    prop_assert_eq!(catalog.resolve(n), catalog.resolve(&respell(n)));
                }
            }

            #[test]
            fn joined_round_trips(a in names()) {
                let set = ScopeSet::from_names(&a);
                prop_assert_eq!(&ScopeSet::from_names(set.joined().split(' ').filter(|s| !s.is_empty())), &set);
                // Sorted, without duplicates.
                let listed: Vec<&str> = set.iter().collect();
                prop_assert!(listed.windows(2).all(|w| w[0] < w[1]));
                prop_assert_eq!(set.len(), a.iter().map(|n| canonical(n)).collect::<BTreeSet<_>>().len());
            }
        }
    }
}
