//! The route table: matchit over path templates, then a small per-template method list.
//!
//! Templates are matched against the *normalized* path (see `pipeline::path`), which is also the
//! path forwarded upstream, so the route the gateway authorizes is the route the upstream serves.

use std::sync::Arc;

use http::Method;

use crate::scopes::ScopeSet;

/// Which methods a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    Any,
    /// Sorted, deduplicated. GET implies HEAD.
    List(Vec<Method>),
}

impl Methods {
    pub fn allows(&self, method: &Method) -> bool {
        match self {
            // `*` is any method of a reverse proxy: CONNECT asks for a tunnel to another host
            // (RFC 9110 §9.3.6), and forwarding it would make a 2xx switch the upstream
            // connection out of HTTP. Only a route that names CONNECT gets it.
            Methods::Any => *method != Method::CONNECT,
            Methods::List(list) => {
                list.contains(method) || (*method == Method::HEAD && list.contains(&Method::GET))
            }
        }
    }

    /// Whether a request could match both: shared methods, or a GET on one side (which
    /// answers HEAD) and an explicit HEAD on the other.
    pub fn overlaps(&self, other: &Methods) -> bool {
        match (self, other) {
            (Methods::Any, _) | (_, Methods::Any) => true,
            (Methods::List(a), Methods::List(b)) => {
                a.iter().any(|m| other.allows(m)) || b.iter().any(|m| self.allows(m))
            }
        }
    }

    pub fn names(&self) -> Vec<&str> {
        match self {
            Methods::Any => vec!["*"],
            Methods::List(list) => list.iter().map(Method::as_str).collect(),
        }
    }
}

/// Where an allowed request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Index into `Config::upstreams`.
    Upstream(usize),
    /// Answered by the gateway itself.
    Builtin(Builtin),
}

/// The endpoints the gateway serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    KeysList,
    KeysCreate,
    KeysDelete,
    Dashboard,
    TokenExchange,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::KeysList | Builtin::KeysCreate | Builtin::KeysDelete => "keys API",
            Builtin::Dashboard => "dashboard",
            Builtin::TokenExchange => "token exchange",
        }
    }
}

/// One route of the policy.
#[derive(Debug, Clone)]
pub struct Route {
    /// The template as configured; the only path that ever appears in metrics labels.
    pub template: Arc<str>,
    pub methods: Methods,
    pub scopes: ScopeSet,
    pub target: Target,
    pub public: bool,
    pub token_query_param: Option<String>,
    pub org_param: Option<String>,
    pub forward_token: bool,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: Option<u64>,
    /// Line of the route in its config file (0 for built-in routes).
    pub line: usize,
}

#[derive(Debug)]
struct Entry {
    routes: Vec<usize>,
    /// Precomputed `Allow` header value for 405 answers.
    allow: String,
}

/// All routes, indexed for matching.
#[derive(Debug, Default)]
pub struct RouteTable {
    router: matchit::Router<Entry>,
    routes: Vec<Route>,
}

/// A route that matched, with the value of its `org_param` if it has one.
#[derive(Debug)]
pub struct RouteMatch<'r, 'p> {
    pub route: &'r Route,
    pub org: Option<&'p str>,
}

/// Why no route matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    NotFound,
    MethodNotAllowed { allow: &'a str },
}

impl RouteTable {
    /// Builds the table; routes must already be checked for method overlaps on equal templates.
    /// Every template matchit refuses is reported, as (index of the route, message).
    pub(crate) fn build(routes: Vec<Route>) -> Result<Self, Vec<(usize, String)>> {
        let mut router = matchit::Router::new();
        let mut errors = Vec::new();
        let mut by_template: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match by_template.iter_mut().find(|(t, _)| *t == r.template) {
                Some((_, list)) => list.push(i),
                None => by_template.push((r.template.clone(), vec![i])),
            }
        }
        for (template, list) in by_template {
            let mut allow: Vec<&str> = Vec::new();
            for &i in &list {
                for m in routes[i].methods.names() {
                    if !allow.contains(&m) {
                        allow.push(m);
                    }
                }
                if routes[i].methods.allows(&Method::GET) && !allow.contains(&"HEAD") {
                    allow.push("HEAD");
                }
            }
            allow.sort_unstable();
            let allow = allow.join(", ");
            let first = list[0];
            if let Err(e) = router.insert(
                template.to_string(),
                Entry {
                    routes: list,
                    allow,
                },
            ) {
                errors.push((first, e.to_string()));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RouteTable { router, routes })
    }

    /// Finds the route for a normalized path and method.
    pub fn lookup<'r, 'p>(
        &'r self,
        method: &Method,
        path: &'p str,
    ) -> Result<RouteMatch<'r, 'p>, Lookup<'r>> {
        let matched = self.router.at(path).map_err(|_| Lookup::NotFound)?;
        let entry = matched.value;
        let Some(route) = entry
            .routes
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| r.methods.allows(method))
        else {
            return Err(Lookup::MethodNotAllowed {
                allow: entry.allow.as_str(),
            });
        };
        let org = route
            .org_param
            .as_deref()
            .and_then(|name| matched.params.get(name));
        Ok(RouteMatch { route, org })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::pipeline::path::normalize;

    static EXAMPLE: std::sync::LazyLock<crate::config::Config> = std::sync::LazyLock::new(|| {
        let text = include_str!("../../config/statebacked.toml");
        crate::config::parse(Path::new("/etc/scopegate/scopegate.toml"), text).unwrap()
    });

    /// One parameter value that a normalized path can carry.
    fn value() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~!$&'()*+,=:@-]{1,8}(%C3%A9)?"
            .prop_filter("dot segment", |s| s != "." && s != "..")
    }

    /// A template with each `{param}` replaced by a value, and each `{*rest}` by 1–3 values.
    fn fill(template: &str, values: &[String]) -> (String, Vec<(String, String)>) {
        let mut path = String::new();
        let mut params = Vec::new();
        for (i, seg) in template[1..].split('/').enumerate() {
            path.push('/');
            let v = &values[i % values.len()];
            if let Some(name) = seg.strip_prefix("{*").and_then(|s| s.strip_suffix('}')) {
                let rest = format!("{v}/{}/x", values[(i + 1) % values.len()]);
                path.push_str(&rest);
                params.push((name.to_owned(), rest));
            } else if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                path.push_str(v);
                params.push((name.to_owned(), v.clone()));
            } else {
                path.push_str(seg);
            }
        }
        (path, params)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every route matches any filling of its own template, with its own method, and hands
        /// back its own `org_param` value.
        #[test]
        fn a_filled_template_matches_its_route(values in prop::collection::vec(value(), 1..4)) {
            let config = &*EXAMPLE;
            for route in config.routes.routes() {
                let (path, params) = fill(&route.template, &values);
                let normal = normalize(&path);
                prop_assert_eq!(normal.as_deref(), Ok(path.as_str()));
                let method = match &route.methods {
                    Methods::Any => Method::PATCH,
                    Methods::List(list) => list[0].clone(),
                };
                let m = config.routes.lookup(&method, &path).unwrap();
                prop_assert_eq!(&m.route.template, &route.template, "{}", path);
                if let Some(name) = &route.org_param {
                    let expected = params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
                    prop_assert_eq!(m.org, expected);
                }
            }
        }
    }
}
