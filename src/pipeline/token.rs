//! Finding the bearer token: the `Authorization` header (RFC 6750 §2.1) or, on routes that
//! allow it, one query parameter (RFC 6750 §2.3; State Backed's `/rt?token=`).

use std::borrow::Cow;

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::{GatewayError, TokenFault};

/// Where the token came from; a query token must be cut from the forwarded URL.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundToken<'a> {
    pub token: Cow<'a, str>,
    pub from_query: bool,
}

/// Picks the token. `query_token` is the route's query parameter value, already taken out of
/// the URL (`Err` when it appeared more than once).
pub fn find<'a>(
    headers: &'a HeaderMap,
    query_token: Result<Option<String>, ()>,
) -> Result<FoundToken<'a>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let header = values.next();
    if values.next().is_some() {
        // Two credentials: which one an upstream or a log would pick is anyone's guess.
        return Err(GatewayError::InvalidToken(TokenFault::Ambiguous));
    }
    let query = query_token.map_err(|()| GatewayError::InvalidToken(TokenFault::Ambiguous))?;
    let from_header = match header {
        None => None,
        Some(value) => {
            // What `HeaderValue::to_str` accepts (a header value holds no control bytes but
            // tab, so: ASCII), checked a word at a time rather than a byte at a time.
            let value = Some(value.as_bytes())
                .filter(|b| b.is_ascii())
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or(GatewayError::InvalidToken(TokenFault::Malformed))?;
            // Another scheme (Basic, …) carries no bearer token.
            bearer(value)
        }
    };
    match (from_header, query) {
        (Some(_), Some(_)) => Err(GatewayError::InvalidToken(TokenFault::Ambiguous)),
        (Some(""), None) => Err(GatewayError::MissingToken),
        (Some(t), None) => Ok(FoundToken {
            token: Cow::Borrowed(t),
            from_query: false,
        }),
        (None, Some(t)) if t.is_empty() => Err(GatewayError::MissingToken),
        (None, Some(t)) => Ok(FoundToken {
            token: Cow::Owned(t),
            from_query: true,
        }),
        (None, None) => Err(GatewayError::MissingToken),
    }
}

/// `Bearer <token>`: the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_value_to_str_refuses_is_malformed_and_only_that() {
        for byte in 0..=255u8 {
            let Ok(value) =
                HeaderValue::from_bytes(&[b"Bearer a".as_slice(), &[byte], b"c"].concat())
            else {
                continue;
            };
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, value.clone());
            let malformed =
                find(&h, Ok(None)) == Err(GatewayError::InvalidToken(TokenFault::Malformed));
            assert_eq!(malformed, value.to_str().is_err(), "byte {byte:#04x}");
        }
        // UTF-8 that is not ASCII: `to_str` refuses it too.
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes("Bearer aéc".as_bytes()).unwrap(),
        );
        assert_eq!(
            find(&h, Ok(None)),
            Err(GatewayError::InvalidToken(TokenFault::Malformed))
        );
    }

    #[test]
    fn bearer_header_any_case() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc "] {
            let h = headers(&[v]);
            assert_eq!(find(&h, Ok(None)).unwrap().token, "abc", "{v}");
        }
    }

    #[test]
    fn missing_and_other_schemes() {
        assert_eq!(
            find(&headers(&[]), Ok(None)),
            Err(GatewayError::MissingToken)
        );
        assert_eq!(
            find(&headers(&["Basic dXNlcjpwYXNz"]), Ok(None)),
            Err(GatewayError::MissingToken)
        );
        assert_eq!(
            find(&headers(&["Bearer "]), Ok(None)),
            Err(GatewayError::MissingToken)
        );
    }

    #[test]
    fn two_credentials_are_ambiguous() {
        let amb = Err(GatewayError::InvalidToken(TokenFault::Ambiguous));
        assert_eq!(find(&headers(&["Bearer a", "Bearer b"]), Ok(None)), amb);
        assert_eq!(find(&headers(&["Bearer a"]), Ok(Some("b".into()))), amb);
        assert_eq!(find(&headers(&[]), Err(())), amb);
    }

    #[test]
    fn query_token() {
        let h = headers(&[]);
        let found = find(&h, Ok(Some("abc".into()))).unwrap();
        assert!(found.from_query);
        assert_eq!(found.token, "abc");
    }
}
