//! One path normalization, used both to match routes and to build the forwarded URL.
//!
//! The gateway must authorize exactly the resource the upstream will serve. Rather than guess
//! how each upstream decodes paths, anything that different servers read differently is
//! refused with 400 (RFC 3986 §6 normalizations are applied where they are unambiguous):
//!
//! - percent-encoded unreserved characters (`%41`, `%7E`, `%2E`) are decoded; other escapes
//!   are kept, with upper-case hex;
//! - refused: dot segments (`.`/`..`, also when encoded), empty segments (`//`), encoded `/` or
//!   `\`, raw `\` or `;`, control characters and NUL (raw or encoded), malformed escapes,
//!   escapes that are not valid UTF-8 (overlong `%C0%AF` and friends), and any byte outside
//!   RFC 3986 `pchar`.

use std::borrow::Cow;

/// The path cannot be given one unambiguous meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousPath;

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Raw bytes allowed in a path: RFC 3986 `pchar` and `/`, minus `;` (matrix parameters are
/// read as path separators by some servers).
fn is_allowed_raw(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Normalizes a request path (without its query). Borrowed when already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, AmbiguousPath> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(AmbiguousPath);
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            // Decode a run of escapes at once so multi-byte UTF-8 can be checked whole.
            let start = i;
            let mut decoded = Vec::new();
            while i < bytes.len() && bytes[i] == b'%' {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex_val),
                    bytes.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(AmbiguousPath);
                };
                decoded.push(h << 4 | l);
                i += 3;
            }
            if std::str::from_utf8(&decoded).is_err() {
                return Err(AmbiguousPath);
            }
            let buf = out.get_or_insert_with(|| bytes[..start].to_vec());
            for v in decoded {
                if v < 0x20 || v == 0x7f || v == b'/' || v == b'\\' {
                    return Err(AmbiguousPath);
                }
                if is_unreserved(v) {
                    buf.push(v);
                } else {
                    buf.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[(v >> 4) as usize],
                        HEX_UPPER[(v & 15) as usize],
                    ]);
                }
            }
            continue;
        }
        if !is_allowed_raw(b) {
            return Err(AmbiguousPath);
        }
        if let Some(buf) = out.as_mut() {
            buf.push(b);
        }
        i += 1;
    }
    let result = match out {
        // Only ASCII was pushed: escapes of non-ASCII bytes stay escaped.
        Some(buf) => Cow::Owned(String::from_utf8(buf).map_err(|_| AmbiguousPath)?),
        None if bytes.is_empty() => return Err(AmbiguousPath),
        None => Cow::Borrowed(path),
    };
    check_segments(&result)?;
    Ok(result)
}

fn check_segments(path: &str) -> Result<(), AmbiguousPath> {
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return Err(AmbiguousPath);
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let h = bytes.get(i + 1).copied().and_then(hex_val)?;
                let l = bytes.get(i + 2).copied().and_then(hex_val)?;
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// What became of a query parameter taken out of a query string.
#[derive(Debug, PartialEq, Eq)]
pub struct TakenParam<'a> {
    /// Its decoded value, if it appeared exactly once.
    pub value: Option<String>,
    /// It appeared more than once (or could not be decoded): the request is ambiguous.
    pub ambiguous: bool,
    /// The query without it; `None` when nothing is left.
    pub rest: Option<Cow<'a, str>>,
}

/// Removes every occurrence of `name` from a query string (form-style `k=v&k=v`).
pub fn take_query_param<'a>(query: Option<&'a str>, name: &str) -> TakenParam<'a> {
    let Some(query) = query else {
        return TakenParam {
            value: None,
            ambiguous: false,
            rest: None,
        };
    };
    let mut value = None;
    let mut count = 0;
    let mut undecodable = false;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name || percent_decode(k).as_deref() == Some(name) {
            count += 1;
            match percent_decode(v) {
                Some(v) => value = Some(v),
                None => undecodable = true,
            }
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    if count == 0 {
        return TakenParam {
            value: None,
            ambiguous: false,
            rest: Some(Cow::Borrowed(query)),
        };
    }
    let ambiguous = count > 1 || undecodable;
    TakenParam {
        value: if ambiguous { None } else { value },
        ambiguous,
        rest: (!kept.is_empty()).then(|| Cow::Owned(kept.join("&"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/machines",
            "/machines/m-1/i/i_2/events",
            "/a/",
            "/a:b@c!$&'()*+,=",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(normalize("/m%61chines/%7Ex").unwrap(), "/machines/~x");
        assert_eq!(normalize("/a%2db").unwrap(), "/a-b");
    }

    #[test]
    fn reserved_escapes_are_kept_upper_case() {
        assert_eq!(normalize("/a%3bb").unwrap(), "/a%3Bb");
        assert_eq!(normalize("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "",
            "machines",
            "/.",
            "/..",
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a/.%2e",
            "/a//b",
            "//a",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a;b",
            "/a%00b",
            "/a%0ab",
            "/a%zz",
            "/a%4",
            "/a%",
            "/%c0%af",
            "/%e0%80%af",
            "/%ff",
            "/a b",
            "/a\"b",
            "/a{b}",
            "/a|b",
            "/a^b",
            "/a`b",
            "/a\u{7f}",
            "/\u{e9}",
        ] {
            assert_eq!(normalize(p), Err(AmbiguousPath), "{p:?}");
        }
    }

    #[test]
    fn normalizing_twice_is_normalizing_once() {
        for p in ["/m%61chines", "/a%3bb", "/caf%c3%a9/x/", "/a%2db%7e"] {
            let once = normalize(p).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once);
        }
    }

    #[test]
    fn query_param_is_taken_out() {
        let t = take_query_param(Some("a=1&token=abc&b=2"), "token");
        assert_eq!(t.value.as_deref(), Some("abc"));
        assert!(!t.ambiguous);
        assert_eq!(t.rest.as_deref(), Some("a=1&b=2"));

        let t = take_query_param(Some("token=abc"), "token");
        assert_eq!(t.rest, None);

        let t = take_query_param(Some("%74oken=abc&x"), "token");
        assert_eq!(t.value.as_deref(), Some("abc"));
        assert_eq!(t.rest.as_deref(), Some("x"));

        let t = take_query_param(Some("token=a&token=b"), "token");
        assert!(t.ambiguous);
        assert_eq!(t.value, None);
        assert_eq!(t.rest, None);

        let t = take_query_param(Some("tokens=a"), "token");
        assert_eq!(t.value, None);
        assert_eq!(t.rest.as_deref(), Some("tokens=a"));
    }

    mod properties {
        use super::*;
        use crate::fuzzing::percent_decode;
        use proptest::prelude::*;

        /// Pieces of request paths, good and bad, so that generated paths often normalize
        /// and often hit each refusal.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[A-Za-z0-9._~-]{1,4}",
                2 => "[!$&'()*+,=:@]",
                2 => "/",
                1 => Just(".".to_owned()),
                1 => Just("..".to_owned()),
                3 => "%[0-9A-Fa-f]{2}",
                1 => prop::sample::select(vec![
                    "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", "%c3%a9", "%C0%AF",
                    "%e2%82%ac", "\\", ";", "%", "%4", "//", " ", "\u{e9}",
                ])
                .prop_map(str::to_owned),
            ]
        }

        fn any_path() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..12).prop_map(|p| format!("/{}", p.concat()))
        }

        /// One segment that needs no normalization: pchar minus `%` and `;`, not a dot segment.
        fn safe_segment() -> impl Strategy<Value = String> {
            "[A-Za-z0-9._~!$&'()*+,=:@-]{1,8}".prop_filter("dot segment", |s| s != "." && s != "..")
        }

        fn safe_path() -> impl Strategy<Value = String> {
            (prop::collection::vec(safe_segment(), 0..6), any::<bool>()).prop_map(
                |(segs, slash)| {
                    let mut p = format!("/{}", segs.join("/"));
                    if slash && !segs.is_empty() {
                        p.push('/');
                    }
                    p
                },
            )
        }

        /// What normalization must produce: unreserved escapes decoded, other escapes
        /// upper-cased, everything else as it is.
        fn reference(s: &str) -> String {
            let b = s.as_bytes();
            let mut out = String::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap();
                    if is_unreserved(v) {
                        out.push(char::from(v));
                    } else {
                        out.push('%');
                        out.push_str(&s[i + 1..i + 3].to_ascii_uppercase());
                    }
                    i += 3;
                } else {
                    out.push(char::from(b[i]));
                    i += 1;
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn normalizing_twice_is_normalizing_once(p in any_path()) {
                if let Ok(once) = normalize(&p) {
                    prop_assert_eq!(normalize(&once), Ok(once.clone()));
                }
            }

            #[test]
            fn normal_paths_hold_nothing_ambiguous(p in any_path()) {
                if let Ok(n) = normalize(&p) {
                    for bad in ["//", "%2F", "%2f", "%5C", "%5c", "%00", "\\", ";"] {
                        prop_assert!(!n.contains(bad), "{:?} → {:?} holds {:?}", p, n, bad);
                    }
                    for seg in n[1..].split('/') {
                        prop_assert!(seg != "." && seg != "..", "{:?} → {:?}", p, n);
                    }
                    prop_assert!(n.starts_with('/'));
                }
            }

            #[test]
            fn normalizing_keeps_the_meaning(p in any_path()) {
                if let Ok(n) = normalize(&p) {
                    prop_assert_eq!(&*n, reference(&p));
                    prop_assert_eq!(percent_decode(&n), percent_decode(&p));
                }
            }

            #[test]
            fn safe_paths_are_kept_as_they_are(p in safe_path()) {
                prop_assert!(matches!(normalize(&p), Ok(Cow::Borrowed(n)) if n == p), "{:?}", p);
            }

            #[test]
            fn an_ambiguous_piece_anywhere_is_refused(
                before in safe_path(),
                bad in prop::sample::select(vec![
                    "/..", "/.", "/%2e%2E", "/.%2e", "//", "%2f", "%5C", "\\", ";", "%00", "%0a",
                    "%c0%af", "%", "%zz",
                ]),
                after in safe_path(),
            ) {
                let before = before.trim_end_matches('/');
                let bad_path = format!("{before}{bad}{after}");
                prop_assert_eq!(normalize(&bad_path), Err(AmbiguousPath), "{:?}", bad_path);
            }
        }
    }
}
