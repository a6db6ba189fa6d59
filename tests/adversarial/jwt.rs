//! JWT attacks (RFC 8725, the OWASP JWT cheat sheet, past CVEs of JWT libraries): every
//! token below is sent as `Authorization: Bearer …` to `GET /machines/m1/i/i1` (`state.read`).
//! Refused tokens must leave the upstream untouched; each table also holds allowed controls
//! (the same shape made right), which must reach it with exactly the key's identity.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::harness::{
    b64, forwarded_claims, header_json, hmac, payload_json, sign_raw, Env, STATE,
};
use crate::support::token::now;
use crate::support::{mint, state_backed_token, TestKey};

/// What a case must come to.
#[derive(Clone)]
pub enum Expect {
    /// 401 with this code, nothing upstream.
    Refused(&'static str),
    /// 200, forwarded with this key's identity.
    Allowed(TestKey),
}

pub struct Case {
    pub name: String,
    pub token: String,
    pub expect: Expect,
}

pub fn case(name: impl Into<String>, token: impl Into<String>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        token: token.into(),
        expect,
    }
}

const INVALID: Expect = Expect::Refused("invalid-token");
const EXPIRED: Expect = Expect::Refused("expired-token");

/// Sends every case and checks both ends. Returns how many ran.
pub async fn run(env: &Env, cases: Vec<Case>) -> usize {
    let mut allowed = 0;
    for c in &cases {
        let res = env.gw.get(STATE).bearer(&c.token).send().await;
        match &c.expect {
            Expect::Refused(code) => env.refused(&c.name, &res, 401, code),
            Expect::Allowed(key) => {
                env.forwarded(&c.name, &res, "GET", STATE, key);
                allowed += 1;
            }
        }
    }
    // Every table carries at least one positive control: a harness that refuses everything
    // cannot pass.
    assert!(allowed > 0, "this table has no allowed control");
    cases.len()
}

/// Splits a compact token into its three segments.
fn parts(token: &str) -> (String, String, String) {
    let mut it = token.split('.');
    let h = it.next().unwrap().to_owned();
    let p = it.next().unwrap().to_owned();
    let s = it.next().unwrap().to_owned();
    (h, p, s)
}

#[tokio::test]
async fn alg_none_and_algorithms_the_key_does_not_have_are_refused() {
    let env = Env::start().await;
    let k = &env.reader;
    let payload = payload_json("");
    let mut cases = vec![
        case(
            "control: HS256 as minted",
            mint(k).sign(),
            Expect::Allowed(k.clone()),
        ),
        case(
            "control: byte for byte what State Backed's token library makes",
            state_backed_token(&k.id, &k.secret, r#"{"sub":"user-1"}"#, now(), now() + 3600),
            Expect::Allowed(k.clone()),
        ),
        case(
            "control: HS512 key, HS512 header",
            mint(&env.hs512).sign(),
            Expect::Allowed(env.hs512.clone()),
        ),
    ];
    // `none` in every casing, unsigned and with a real HMAC over the same bytes (CVE-2015-9235
    // and friends: libraries that trusted the header's alg).
    for none in ["none", "None", "NONE", "nOnE", "none "] {
        let header = format!(r#"{{"alg":"{none}","kid":"{}"}}"#, k.id);
        let unsigned = format!("{}.{}.", b64(header.as_bytes()), b64(payload.as_bytes()));
        cases.push(case(
            format!("alg {none:?}, empty signature"),
            unsigned,
            INVALID,
        ));
        cases.push(case(
            format!("alg {none:?}, HMAC signature"),
            sign_raw(
                Algorithm::HS256,
                &k.secret,
                header.as_bytes(),
                payload.as_bytes(),
            ),
            INVALID,
        ));
    }
    // Header alg that is not the key's, signed with the key's algorithm or with the header's.
    for alg in ["HS384", "HS512"] {
        cases.push(case(
            format!("header {alg} on an HS256 key, signed HS256"),
            mint(k).header("alg", json!(alg)).sign(),
            INVALID,
        ));
        let header = format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, k.id);
        let real = if alg == "HS384" {
            Algorithm::HS384
        } else {
            Algorithm::HS512
        };
        cases.push(case(
            format!("header {alg} on an HS256 key, signed {alg} with its secret"),
            sign_raw(real, &k.secret, header.as_bytes(), payload.as_bytes()),
            INVALID,
        ));
    }
    cases.push(case(
        "header HS256 on an HS512 key, signed HS256 with its secret",
        sign_raw(
            Algorithm::HS256,
            &env.hs512.secret,
            header_json(&env.hs512).as_bytes(),
            payload.as_bytes(),
        ),
        INVALID,
    ));
    // Asymmetric algorithms: HS/RS confusion (CVE-2016-10555, CVE-2016-5431): the attacker
    // signs with HMAC using the secret, or using a public key's text as the HMAC secret.
    let public_pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
    for alg in ["RS256", "RS512", "PS256", "ES256", "ES384", "EdDSA"] {
        let header = format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, k.id);
        cases.push(case(
            format!("{alg} header, HMAC-SHA256 with the secret"),
            sign_raw(
                Algorithm::HS256,
                &k.secret,
                header.as_bytes(),
                payload.as_bytes(),
            ),
            INVALID,
        ));
        cases.push(case(
            format!("{alg} header, HMAC-SHA256 with a public key as the secret"),
            sign_raw(
                Algorithm::HS256,
                public_pem,
                header.as_bytes(),
                payload.as_bytes(),
            ),
            INVALID,
        ));
    }
    // alg that is not a string, missing, or misspelled.
    for (label, alg) in [
        ("lower-case hs256", json!("hs256")),
        ("HS256 with a space", json!("HS256 ")),
        ("number", json!(256)),
        ("null", Value::Null),
        ("array", json!(["HS256"])),
        ("object", json!({"alg": "HS256"})),
        ("empty", json!("")),
        ("HS1", json!("HS1")),
    ] {
        cases.push(case(
            format!("alg {label}"),
            mint(k).header("alg", alg).sign(),
            INVALID,
        ));
    }
    let no_alg = format!(r#"{{"kid":"{}"}}"#, k.id);
    cases.push(case(
        "no alg at all",
        sign_raw(
            Algorithm::HS256,
            &k.secret,
            no_alg.as_bytes(),
            payload.as_bytes(),
        ),
        INVALID,
    ));
    let n = run(&env, cases).await;
    assert_eq!(n, 39);
}

#[tokio::test]
async fn keys_and_key_urls_in_the_header_and_crit_are_refused_even_when_signed() {
    let env = Env::start().await;
    let k = &env.reader;
    let attacker = "attacker-secret-attacker-secret-attacker";
    let jwk = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(attacker), "kid": k.id});
    let mut cases = vec![case(
        "control: extra harmless header fields (typ, cty)",
        mint(k)
            .header("typ", json!("JWT"))
            .header("cty", json!("json"))
            .sign(),
        Expect::Allowed(k.clone()),
    )];
    let embedded: Vec<(&str, Value)> = vec![
        ("jwk (oct)", jwk.clone()),
        (
            "jwk (RSA)",
            json!({"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": k.id}),
        ),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("jku to loopback", json!("http://127.0.0.1:1/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUU2VjcmV0"])),
        ("crit exp", json!(["exp"])),
        ("crit b64", json!(["b64"])),
        ("crit empty", json!([])),
    ];
    for (label, value) in embedded {
        let param = label.split(' ').next().unwrap();
        let mut m = mint(k).header(param, value.clone());
        if label == "crit b64" {
            m = m.header("b64", json!(false));
        }
        // Signed with the real secret: the refusal is about the header, not the signature.
        cases.push(case(
            format!("{label}, signed with the key's secret"),
            m.sign(),
            INVALID,
        ));
        cases.push(case(
            format!("{label}, signed with the attacker's key"),
            mint(k).header(param, value).sign_with(attacker),
            INVALID,
        ));
    }
    // A token whose kid is unknown but that carries its own key.
    cases.push(case(
        "unknown kid with a jwk",
        mint(k)
            .header("kid", json!("sbk_attacker"))
            .header("jwk", jwk)
            .sign_with(attacker),
        INVALID,
    ));
    let n = run(&env, cases).await;
    assert_eq!(n, 20);
}

#[tokio::test]
async fn missing_unknown_and_odd_kids_are_refused() {
    let env = Env::start().await;
    let k = &env.reader;
    let mut cases = vec![
        case(
            "control: our kid",
            mint(k).sign(),
            Expect::Allowed(k.clone()),
        ),
        case(
            "control: the other organization's key, its own secret",
            mint(&env.other).sign(),
            Expect::Allowed(env.other.clone()),
        ),
    ];
    let kids: Vec<(&str, Value)> = vec![
        ("empty", json!("")),
        ("path traversal", json!("../../etc/passwd")),
        (
            "path traversal to a key file",
            json!(format!("../{}.toml", env.org)),
        ),
        ("absolute path", json!("/etc/passwd")),
        ("encoded traversal", json!("..%2f..%2fetc%2fpasswd")),
        ("SQL", json!("' OR '1'='1")),
        ("SQL union", json!("x' UNION SELECT 'secret' --")),
        ("our kid upper-cased", json!(k.id.to_uppercase())),
        ("our kid with a space", json!(format!("{} ", k.id))),
        ("our kid with NUL", json!(format!("{}\u{0}", k.id))),
        ("our kid with CRLF", json!(format!("{}\r\n", k.id))),
        ("huge", json!("k".repeat(4000))),
        ("number", json!(1)),
        ("object", json!({"id": k.id})),
        ("array", json!([k.id])),
        ("null", Value::Null),
        ("true", json!(true)),
        ("unknown key id", json!("sbk_doesnotexist")),
    ];
    for (label, kid) in kids {
        cases.push(case(
            format!("kid {label}"),
            mint(k).header("kid", kid).sign(),
            INVALID,
        ));
    }
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), json!("HS256"));
    let no_kid = serde_json::to_vec(&header).unwrap();
    cases.push(case(
        "no kid",
        sign_raw(
            Algorithm::HS256,
            &k.secret,
            &no_kid,
            payload_json("").as_bytes(),
        ),
        INVALID,
    ));
    // Another organization's key id, signed with our secret: the key named must have signed.
    cases.push(case(
        "other organization's kid, our secret",
        mint(k).header("kid", json!(env.other.id)).sign(),
        INVALID,
    ));
    let n = run(&env, cases).await;
    assert_eq!(n, 22);

    // The other organization's valid token cannot act on ours.
    let t = mint(&env.other).sign();
    let res = env
        .gw
        .get(STATE)
        .bearer(&t)
        .header("x-statebacked-org-id", &env.org)
        .send()
        .await;
    env.refused("other org's key naming our org", &res, 403, "missing-org");
    let path = format!("/orgs/{}/members/x", env.org);
    let res = env.gw.get(&path).bearer(&t).send().await;
    env.refused("other org's key on our org path", &res, 403, "missing-org");
    let path = format!("/orgs/{}/members/x", env.other_org);
    let res = env.gw.get(&path).bearer(&t).send().await;
    env.forwarded(
        "control: other org on its own path",
        &res,
        "GET",
        &path,
        &env.other,
    );
}

#[tokio::test]
async fn empty_stripped_truncated_and_tampered_signatures_are_refused() {
    let env = Env::start().await;
    let k = &env.reader;
    let good = mint(k).sign();
    let (h, p, s) = parts(&good);
    let sig = URL_SAFE_NO_PAD.decode(&s).unwrap();
    let mut flipped = s.clone().into_bytes();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    // The last character of a 32-byte signature carries 2 unused bits: a different character
    // with the same data bits is a non-canonical encoding of the same bytes.
    let last = s.chars().last().unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.iter().position(|&c| c as char == last).unwrap();
    let sibling = alphabet[(idx & !3) | ((idx + 1) & 3)] as char;
    let non_canonical = format!("{}{sibling}", &s[..s.len() - 1]);
    assert_ne!(non_canonical, s);
    let other_token = mint(k).claim("jti", json!("another")).sign();
    let (_, p2, s2) = parts(&other_token);
    let mut tampered_payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p).unwrap()).unwrap();
    tampered_payload["act"]["sub"] = json!("admin");
    let tampered_payload = b64(&serde_json::to_vec(&tampered_payload).unwrap());
    let tampered_header = b64(format!(r#"{{"alg":"HS256","kid":"{}","x":1}}"#, k.id).as_bytes());

    let cases = vec![
        case("control: intact", good.clone(), Expect::Allowed(k.clone())),
        case("empty signature", format!("{h}.{p}."), INVALID),
        case(
            "signature stripped (two segments)",
            format!("{h}.{p}"),
            INVALID,
        ),
        case(
            "truncated by one character",
            &good[..good.len() - 1],
            INVALID,
        ),
        case(
            "truncated to half",
            format!("{h}.{p}.{}", b64(&sig[..16])),
            INVALID,
        ),
        case(
            "truncated to one byte",
            format!("{h}.{p}.{}", b64(&sig[..1])),
            INVALID,
        ),
        case(
            "one character flipped",
            format!("{h}.{p}.{flipped}"),
            INVALID,
        ),
        case(
            "non-canonical trailing bits",
            format!("{h}.{p}.{non_canonical}"),
            INVALID,
        ),
        case(
            "signature of another token",
            format!("{h}.{p}.{s2}"),
            INVALID,
        ),
        case("payload of another token", format!("{h}.{p2}.{s}"), INVALID),
        case(
            "payload tampered (sub)",
            format!("{h}.{tampered_payload}.{s}"),
            INVALID,
        ),
        case(
            "header tampered",
            format!("{tampered_header}.{p}.{s}"),
            INVALID,
        ),
        case("signature doubled", format!("{h}.{p}.{s}{s}"), INVALID),
        case(
            "signature all zero",
            format!("{h}.{p}.{}", b64(&[0u8; 32])),
            INVALID,
        ),
        case(
            "signature extended by a byte",
            format!("{h}.{p}.{}", b64(&[sig.as_slice(), &[0]].concat())),
            INVALID,
        ),
        case(
            "SHA-512 HMAC on an HS256 key",
            format!(
                "{h}.{p}.{}",
                b64(&hmac(
                    Algorithm::HS512,
                    k.secret.as_bytes(),
                    format!("{h}.{p}").as_bytes()
                ))
            ),
            INVALID,
        ),
        case(
            "forged with another secret",
            mint(k).sign_with("x".repeat(40).as_str()),
            INVALID,
        ),
        case(
            "forged with the key id as secret",
            mint(k).sign_with(&k.id),
            INVALID,
        ),
        case(
            "forged with an empty secret",
            mint(k).sign_with(""),
            INVALID,
        ),
    ];
    let n = run(&env, cases).await;
    assert_eq!(n, 19);
}

#[tokio::test]
async fn non_canonical_base64url_and_wrong_segment_counts_are_refused() {
    let env = Env::start().await;
    let k = &env.reader;
    // A token whose segments contain `-` or `_`, so the standard alphabet differs. Bounded.
    let mut good = String::new();
    for i in 0..200 {
        good = mint(k).claim("jti", json!(i)).sign();
        if good.contains(['-', '_']) {
            break;
        }
    }
    assert!(
        good.contains(['-', '_']),
        "no token with - or _ in 200 tries"
    );
    let (h, p, s) = parts(&good);
    let std_alphabet = |x: &str| x.replace('-', "+").replace('_', "/");
    let padded = |x: &str| {
        STANDARD
            .encode(URL_SAFE_NO_PAD.decode(x).unwrap())
            .replace('+', "-")
            .replace('/', "_")
    };
    let p_padded = padded(&p);
    let s_padded = padded(&s);
    let cases = vec![
        case(
            "control: canonical",
            good.clone(),
            Expect::Allowed(k.clone()),
        ),
        case(
            "standard alphabet (+ /)",
            format!(
                "{}.{}.{}",
                std_alphabet(&h),
                std_alphabet(&p),
                std_alphabet(&s)
            ),
            INVALID,
        ),
        case("padded signature", format!("{h}.{p}.{s}="), INVALID),
        case(
            "signature padded properly",
            format!("{h}.{p}.{s_padded}"),
            INVALID,
        ),
        case("padded payload", format!("{h}.{p_padded}.{s}"), INVALID),
        case("padded header", format!("{h}==.{p}.{s}"), INVALID),
        case(
            "space inside",
            format!("{h}.{} {}.{s}", &p[..4], &p[4..]),
            INVALID,
        ),
        case("tab inside", format!("{h}.{p}\t.{s}"), INVALID),
        case("one segment", h.clone(), INVALID),
        case("two segments", format!("{h}.{p}"), INVALID),
        case("four segments", format!("{good}.{s}"), INVALID),
        case("four segments, empty last", format!("{good}."), INVALID),
        case(
            "five segments (JWE shape)",
            format!(
                "{}.{}.{}.{}.{}",
                b64(br#"{"alg":"dir","enc":"A256GCM"}"#),
                "",
                "AAAA",
                p,
                s
            ),
            INVALID,
        ),
        case("empty header", format!(".{p}.{s}"), INVALID),
        case("empty payload", format!("{h}..{s}"), INVALID),
        case("only dots", "..", INVALID),
        case("three dots", "...", INVALID),
        case("leading dot", format!(".{good}"), INVALID),
        case("percent-encoded dot", good.replacen('.', "%2E", 1), INVALID),
        case("quoted", format!("\"{good}\""), INVALID),
        case(
            "JSON serialization",
            format!(r#"{{"payload":"{p}"}}"#),
            INVALID,
        ),
        case("non-base64 character", format!("{h}.{p}!.{s}"), INVALID),
        case(
            "base64 of wrong length",
            format!("{h}.{p}.{}", &s[..s.len() - 2]),
            INVALID,
        ),
    ];
    let n = run(&env, cases).await;
    assert_eq!(n, 23);
}

#[tokio::test]
async fn payloads_that_are_not_json_objects_and_duplicate_members_are_refused() {
    let env = Env::start().await;
    let k = &env.reader;
    let header = header_json(k);
    let signed = |payload: &[u8]| sign_raw(Algorithm::HS256, &k.secret, header.as_bytes(), payload);
    let signed_h = |h: &[u8]| sign_raw(Algorithm::HS256, &k.secret, h, payload_json("").as_bytes());
    let now = now();
    let valid = payload_json("");
    let mut invalid_utf8 = valid.clone().into_bytes();
    let at = invalid_utf8.iter().position(|&b| b == b'u').unwrap();
    invalid_utf8[at] = 0xff;
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(valid.as_bytes());
    let cases = vec![
        case("control: raw JSON payload", signed(valid.as_bytes()), Expect::Allowed(k.clone())),
        case(
            "control: JSON whitespace around the object (valid JSON, signed)",
            signed(format!(" \n{valid}\n ").as_bytes()),
            Expect::Allowed(k.clone()),
        ),
        case("array payload", signed(b"[]"), INVALID),
        case("array of the claims", signed(format!("[{valid}]").as_bytes()), INVALID),
        case("string payload", signed(br#""claims""#), INVALID),
        case("number payload", signed(b"42"), INVALID),
        case("null payload", signed(b"null"), INVALID),
        case("true payload", signed(b"true"), INVALID),
        case("empty payload", signed(b""), INVALID),
        case("invalid UTF-8 payload", signed(&invalid_utf8), INVALID),
        case("byte-order mark", signed(&bom), INVALID),
        case("trailing garbage", signed(format!("{valid}x").as_bytes()), INVALID),
        case("two objects", signed(format!("{valid}{valid}").as_bytes()), INVALID),
        case("truncated JSON", signed(&valid.as_bytes()[..valid.len() - 1]), INVALID),
        case("JSON with a comment", signed(format!("/*x*/{valid}").as_bytes()), INVALID),
        case("act is a string", signed(valid.replace(r#""act":{"sub":"user-1"}"#, r#""act":"admin""#).as_bytes()), INVALID),
        case("act is an array", signed(valid.replace(r#""act":{"sub":"user-1"}"#, r#""act":[{"sub":"a"}]"#).as_bytes()), INVALID),
        case("header is an array", signed_h(b"[]"), INVALID),
        case("header is a string", signed_h(br#""HS256""#), INVALID),
        case("header is null", signed_h(b"null"), INVALID),
        case("header is invalid UTF-8", signed_h(b"{\"alg\":\"HS256\",\"kid\":\"\xff\"}"), INVALID),
        // Duplicate members: two parsers of one token must never disagree (RFC 8259 §4 leaves
        // it open; RFC 7515 §5.2 says reject or take the last — we reject).
        case(
            "exp twice, expired last",
            signed(payload_json(&format!(r#","exp":{}"#, now - 7200)).as_bytes()),
            INVALID,
        ),
        case(
            "exp twice, valid last",
            signed(
                format!(
                    r#"{{"act":{{"sub":"u"}},"aud":"https://api.statebacked.dev/","exp":{},"exp":{}}}"#,
                    now - 7200,
                    now + 3600
                )
                .as_bytes(),
            ),
            INVALID,
        ),
        case(
            "exp twice, one spelled with an escape",
            signed(payload_json(&format!(r#","ex\u0070":{}"#, now - 7200)).as_bytes()),
            INVALID,
        ),
        case(
            "act twice",
            signed(payload_json(r#","act":{"sub":"admin"}"#).as_bytes()),
            INVALID,
        ),
        case(
            "aud twice",
            signed(payload_json(r#","aud":"https://evil.example/""#).as_bytes()),
            INVALID,
        ),
        case(
            "scope twice (narrow, then wide)",
            signed(payload_json(r#","scope":"machines.read","scope":"state.read org-keys.write""#).as_bytes()),
            INVALID,
        ),
        case(
            "kid twice (other org's, then ours)",
            signed_h(format!(r#"{{"alg":"HS256","kid":"{}","kid":"{}"}}"#, env.other.id, k.id).as_bytes()),
            INVALID,
        ),
        case(
            "alg twice (none, then HS256)",
            signed_h(format!(r#"{{"alg":"none","alg":"HS256","kid":"{}"}}"#, k.id).as_bytes()),
            INVALID,
        ),
    ];
    let n = run(&env, cases).await;
    assert_eq!(n, 29);
}

#[tokio::test]
async fn time_claims_of_every_odd_shape() {
    let env = Env::start().await;
    let k = &env.reader;
    let now = now();
    let ok = Expect::Allowed(k.clone());
    let header = header_json(k);
    // Raw JSON numbers serde_json would not write from a u64.
    let raw = |claims: &str| {
        let payload =
            format!(r#"{{"act":{{"sub":"user-1"}},"aud":"https://api.statebacked.dev/"{claims}}}"#);
        sign_raw(
            Algorithm::HS256,
            &k.secret,
            header.as_bytes(),
            payload.as_bytes(),
        )
    };
    let exp = now + 3600;
    let cases = vec![
        case("control: exp in an hour", mint(k).sign(), ok.clone()),
        // A fractional NumericDate is allowed by RFC 7519 §2.
        case(
            "exp as a float",
            raw(&format!(r#","exp":{exp}.5"#)),
            ok.clone(),
        ),
        case(
            "exp inside the leeway",
            mint(k).claim("exp", json!(now - 10)).sign(),
            ok.clone(),
        ),
        // Signed by the key: a long-lived token is the key holder's choice.
        case(
            "exp u64::MAX",
            raw(&format!(r#","exp":{}"#, u64::MAX)),
            ok.clone(),
        ),
        case("exp missing", mint(k).without("exp").sign(), INVALID),
        case(
            "exp null",
            mint(k).claim("exp", Value::Null).sign(),
            INVALID,
        ),
        case(
            "exp as a string",
            mint(k).claim("exp", json!(exp.to_string())).sign(),
            INVALID,
        ),
        case(
            "exp as a date string",
            mint(k).claim("exp", json!("2099-01-01T00:00:00Z")).sign(),
            INVALID,
        ),
        case(
            "exp true",
            mint(k).claim("exp", json!(true)).sign(),
            INVALID,
        ),
        case(
            "exp array",
            mint(k).claim("exp", json!([exp])).sign(),
            INVALID,
        ),
        case("exp 1e300", raw(r#","exp":1e300"#), INVALID),
        case(
            "exp beyond u64",
            raw(r#","exp":18446744073709551616"#),
            INVALID,
        ),
        case("exp negative", raw(r#","exp":-1"#), INVALID),
        case("exp negative huge", raw(r#","exp":-1e300"#), INVALID),
        case("exp 0", mint(k).claim("exp", json!(0)).sign(), EXPIRED),
        case(
            "exp an hour ago",
            mint(k).claim("exp", json!(now - 3600)).sign(),
            EXPIRED,
        ),
        case(
            "exp just past the leeway",
            mint(k).claim("exp", json!(now - 120)).sign(),
            EXPIRED,
        ),
        case(
            "control: nbf in the past",
            mint(k).claim("nbf", json!(now - 100)).sign(),
            ok.clone(),
        ),
        case(
            "control: nbf as a float",
            raw(&format!(r#","exp":{exp},"nbf":{}.25"#, now - 1)),
            ok.clone(),
        ),
        case(
            "nbf in an hour",
            mint(k).claim("nbf", json!(now + 3600)).sign(),
            EXPIRED,
        ),
        case(
            "nbf u64::MAX",
            raw(&format!(r#","exp":{exp},"nbf":{}"#, u64::MAX)),
            EXPIRED,
        ),
        case(
            "nbf as a string",
            mint(k).claim("nbf", json!("0")).sign(),
            INVALID,
        ),
        case(
            "nbf 1e300",
            raw(&format!(r#","exp":{exp},"nbf":1e300"#)),
            INVALID,
        ),
        case(
            "nbf negative",
            raw(&format!(r#","exp":{exp},"nbf":-5"#)),
            INVALID,
        ),
        case(
            "nbf object",
            mint(k).claim("nbf", json!({"t": 0})).sign(),
            INVALID,
        ),
        case(
            "control: iat missing",
            mint(k).without("iat").sign(),
            ok.clone(),
        ),
        case(
            "control: iat as a float",
            raw(&format!(r#","exp":{exp},"iat":{now}.9"#)),
            ok.clone(),
        ),
        // Far in the past is not a threat: exp bounds the token's life.
        case(
            "control: iat negative",
            raw(&format!(r#","exp":{exp},"iat":-1"#)),
            ok.clone(),
        ),
        case(
            "iat in an hour",
            mint(k).claim("iat", json!(now + 3600)).sign(),
            INVALID,
        ),
        case(
            "iat u64::MAX",
            raw(&format!(r#","exp":{exp},"iat":{}"#, u64::MAX)),
            INVALID,
        ),
        case(
            "iat 1e300",
            raw(&format!(r#","exp":{exp},"iat":1e300"#)),
            INVALID,
        ),
        case(
            "iat as a string",
            mint(k).claim("iat", json!(now.to_string())).sign(),
            INVALID,
        ),
        case(
            "iat true",
            mint(k).claim("iat", json!(true)).sign(),
            INVALID,
        ),
        case(
            "iat array",
            mint(k).claim("iat", json!([now])).sign(),
            INVALID,
        ),
    ];
    let n = run(&env, cases).await;
    assert_eq!(n, 34);
}

#[tokio::test]
async fn audiences_must_name_ours_exactly() {
    let env = Env::start().await;
    let k = &env.reader;
    let ours = "https://api.statebacked.dev/";
    let ok = Expect::Allowed(k.clone());
    let cases = vec![
        case("control: ours", mint(k).sign(), ok.clone()),
        case(
            "control: array with ours",
            mint(k)
                .claim("aud", json!(["https://other.example/", ours]))
                .sign(),
            ok.clone(),
        ),
        case(
            "control: array of only ours",
            mint(k).claim("aud", json!([ours])).sign(),
            ok.clone(),
        ),
        case(
            "another audience",
            mint(k).claim("aud", json!("https://other.example/")).sign(),
            INVALID,
        ),
        case(
            "ours without the slash",
            mint(k)
                .claim("aud", json!("https://api.statebacked.dev"))
                .sign(),
            INVALID,
        ),
        case(
            "ours upper-cased",
            mint(k).claim("aud", json!(ours.to_uppercase())).sign(),
            INVALID,
        ),
        case(
            "ours with a space",
            mint(k).claim("aud", json!(format!("{ours} "))).sign(),
            INVALID,
        ),
        case(
            "ours as a prefix",
            mint(k).claim("aud", json!(format!("{ours}x"))).sign(),
            INVALID,
        ),
        case(
            "ours over http",
            mint(k)
                .claim("aud", json!("http://api.statebacked.dev/"))
                .sign(),
            INVALID,
        ),
        case(
            "array without ours",
            mint(k)
                .claim("aud", json!(["https://a.example/", "https://b.example/"]))
                .sign(),
            INVALID,
        ),
        case(
            "empty array",
            mint(k).claim("aud", json!([])).sign(),
            INVALID,
        ),
        case(
            "empty string",
            mint(k).claim("aud", json!("")).sign(),
            INVALID,
        ),
        case("missing", mint(k).without("aud").sign(), INVALID),
        case("null", mint(k).claim("aud", Value::Null).sign(), INVALID),
        case("number", mint(k).claim("aud", json!(1)).sign(), INVALID),
        case(
            "object",
            mint(k).claim("aud", json!({"aud": ours})).sign(),
            INVALID,
        ),
        case(
            "array with ours and a number",
            mint(k).claim("aud", json!([ours, 1])).sign(),
            INVALID,
        ),
        case(
            "nested array",
            mint(k).claim("aud", json!([[ours]])).sign(),
            INVALID,
        ),
    ];
    let n = run(&env, cases).await;
    assert_eq!(n, 18);
}

#[tokio::test]
async fn claims_cannot_grant_scopes_or_change_the_organization() {
    let env = Env::start().await;
    let k = &env.reader;
    // Each of these reaches the upstream — and the identity there is still the key's.
    let allowed: Vec<(&str, String, &str)> = vec![
        (
            "scope claim adding scopes the key lacks",
            mint(k)
                .claim(
                    "scope",
                    json!("state.read org-keys.write tokens.admin machines.admin"),
                )
                .sign(),
            "state.read",
        ),
        (
            "scope array adding scopes",
            mint(k)
                .claim("scope", json!(["state.read", "org-members.write"]))
                .sign(),
            "state.read",
        ),
        (
            "org claims",
            mint(k)
                .claim("org", json!(env.other_org))
                .claim("org_id", json!(env.other_org))
                .claim("orgId", json!(env.other_org))
                .claim("x-statebacked-org-id", json!(env.other_org))
                .claim("x-scopegate-org", json!(env.other_org))
                .sign(),
            "events.write machines.read state.read",
        ),
        (
            "kid and key claims in the payload",
            mint(k)
                .claim("kid", json!(env.admin.id))
                .claim("key", json!(env.admin.id))
                .claim("scopes", json!(["org-keys.write"]))
                .sign(),
            "events.write machines.read state.read",
        ),
        (
            "org inside act",
            mint(k)
                .claim("act", json!({"sub": "u", "org": env.other_org}))
                .sign(),
            "events.write machines.read state.read",
        ),
    ];
    for (name, token, scopes) in &allowed {
        let res = env.gw.get(STATE).bearer(token).send().await;
        let seen = env.forwarded(name, &res, "GET", STATE, k);
        assert_eq!(seen.header("x-scopegate-scopes"), Some(*scopes), "{name}");
    }
    let refused: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "scope claim of only scopes the key lacks",
            mint(k).claim("scope", json!("org-keys.write")).sign(),
            STATE,
            403,
            "missing-scope",
        ),
        (
            "empty scope claim",
            mint(k).claim("scope", json!("")).sign(),
            STATE,
            403,
            "missing-scope",
        ),
        (
            "scope claim as a number",
            mint(k).claim("scope", json!(1)).sign(),
            STATE,
            401,
            "invalid-token",
        ),
        (
            "scope claim as an object",
            mint(k).claim("scope", json!({"state.read": true})).sign(),
            STATE,
            401,
            "invalid-token",
        ),
        (
            "org claim on another org's path",
            mint(&env.admin).claim("org", json!(env.other_org)).sign(),
            "/orgs/OTHER/members/x",
            403,
            "missing-org",
        ),
        (
            "scope claim naming org-keys.write the key lacks, on an org-keys.write route",
            mint(k).claim("scope", json!("org-keys.write")).sign(),
            "/org-admin",
            403,
            "missing-scope",
        ),
    ];
    for (name, token, path, status, code) in &refused {
        let path = path.replace("OTHER", &env.other_org);
        let res = env.gw.get(&path).bearer(token).send().await;
        env.refused(name, &res, *status, code);
    }
}

#[tokio::test]
async fn claims_cannot_inject_forwarded_headers() {
    let env = Env::start().await;
    let k = &env.reader;
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "CRLF header injection",
            json!("u\r\nx-evil: 1"),
            Some("u%0D%0Ax-evil:%201"),
        ),
        ("bare LF", json!("u\nx-evil: 1"), Some("u%0Ax-evil:%201")),
        ("bare CR", json!("u\rx-evil"), Some("u%0Dx-evil")),
        ("NUL", json!("u\u{0}v"), Some("u%00v")),
        (
            "CRLF CRLF body",
            json!("u\r\n\r\nGET /x HTTP/1.1"),
            Some("u%0D%0A%0D%0AGET%20/x%20HTTP/1.1"),
        ),
        (
            "identity header line",
            json!("u\r\nx-scopegate-org: evil"),
            Some("u%0D%0Ax-scopegate-org:%20evil"),
        ),
        ("percent sign", json!("%0D%0A"), Some("%250D%250A")),
        ("non-ASCII", json!("ü"), Some("%C3%BC")),
        ("DEL and tab", json!("a\u{7f}\tb"), Some("a%7F%09b")),
        ("number", json!(42), Some("42")),
        ("object (no sub header)", json!({"id": "x\r\ny"}), None),
        ("null (no sub header)", Value::Null, None),
    ];
    for (name, sub, expected) in cases {
        let act = json!({"sub": sub, "note": "line\r\nbreak: x\u{0}"});
        let token = mint(k).claim("act", act.clone()).sign();
        let res = env.gw.get(STATE).bearer(&token).send().await;
        let seen = env.forwarded(name, &res, "GET", STATE, k);
        assert_eq!(seen.header("x-scopegate-sub"), expected, "{name}");
        assert!(
            seen.headers.get("x-evil").is_none(),
            "{name}: injected header"
        );
        // The claims arrive whole, as base64url JSON.
        assert_eq!(forwarded_claims(&seen), act, "{name}");
    }
}

#[tokio::test]
async fn oversized_tokens_are_refused() {
    let env = Env::start().await;
    let k = &env.reader;
    let big = "x".repeat(9000);
    let res = env
        .gw
        .get(STATE)
        .bearer(&mint(k).claim("act", json!({"sub": "u", "pad": big})).sign())
        .send()
        .await;
    env.refused("claims over max_token_bytes", &res, 401, "invalid-token");
    let res = env
        .gw
        .get(STATE)
        .bearer(&mint(k).header("pad", json!(big)).sign())
        .send()
        .await;
    env.refused("header over max_token_bytes", &res, 401, "invalid-token");
    let res = env.gw.get(STATE).bearer(&"a".repeat(40_000)).send().await;
    env.refused("40 kB of junk", &res, 401, "invalid-token");
    // 1e4 nesting levels cannot fit in 8 KiB: refused by size before any parse.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let token = sign_raw(
        Algorithm::HS256,
        &k.secret,
        header_json(k).as_bytes(),
        payload_json(&format!(r#","deep":{deep}"#)).as_bytes(),
    );
    let res = env.gw.get(STATE).bearer(&token).send().await;
    env.refused(
        "1e4 levels at the default limit",
        &res,
        401,
        "invalid-token",
    );
    // Just under the limit: accepted with every claim forwarded.
    let pad = "p".repeat(4000);
    let token = mint(k).claim("act", json!({"sub": "u", "pad": pad})).sign();
    assert!(token.len() < 8192);
    let res = env.gw.get(STATE).bearer(&token).send().await;
    let seen = env.forwarded("control: large but under the limit", &res, "GET", STATE, k);
    assert_eq!(
        forwarded_claims(&seen)["pad"].as_str().map(str::len),
        Some(4000)
    );
}

#[tokio::test]
async fn deeply_nested_claims_do_not_crash_the_gateway() {
    // A token limit large enough to let 1e4 nesting levels through to the JSON parser.
    let env = Env::start_with("", "[auth]\nmax_token_bytes = 60000\n").await;
    let k = &env.reader;
    let header = header_json(k);
    let nested =
        |open: &str, close: &str, n: usize| format!("{}{}", open.repeat(n), close.repeat(n));
    let cases = vec![
        case(
            "control: 100 levels inside act (serde_json's limit is 128)",
            sign_raw(
                Algorithm::HS256,
                &k.secret,
                header.as_bytes(),
                payload_json(&format!(r#","deep":{}"#, nested("[", "]", 100))).as_bytes(),
            ),
            Expect::Allowed(k.clone()),
        ),
        // serde_json skips a member no one reads without recursing (and the gateway never
        // reads or forwards it): a signed token with one is simply valid.
        case(
            "control: 1e4 arrays in a claim nobody reads",
            sign_raw(
                Algorithm::HS256,
                &k.secret,
                header.as_bytes(),
                payload_json(&format!(r#","deep":{}"#, nested("[", "]", 10_000))).as_bytes(),
            ),
            Expect::Allowed(k.clone()),
        ),
        case(
            "1e4 objects inside act",
            sign_raw(
                Algorithm::HS256,
                &k.secret,
                header.as_bytes(),
                payload_json("")
                    .replace(
                        r#""act":{"sub":"user-1"}"#,
                        &format!(
                            r#""act":{{"sub":"u","d":{}0{}}}"#,
                            r#"{"a":"#.repeat(4000),
                            "}".repeat(4000)
                        ),
                    )
                    .as_bytes(),
            ),
            INVALID,
        ),
        // Unknown header parameters are skipped the same way (RFC 7515 §4: ignored unless
        // listed in `crit`, which is refused).
        case(
            "control: 1e4 arrays in a header parameter nobody reads",
            sign_raw(
                Algorithm::HS256,
                &k.secret,
                format!(
                    r#"{{"alg":"HS256","kid":"{}","x":{}}}"#,
                    k.id,
                    nested("[", "]", 10_000)
                )
                .as_bytes(),
                payload_json("").as_bytes(),
            ),
            Expect::Allowed(k.clone()),
        ),
        case(
            "1e4 arrays as scope",
            sign_raw(
                Algorithm::HS256,
                &k.secret,
                header.as_bytes(),
                payload_json(&format!(r#","scope":{}"#, nested("[", "]", 10_000))).as_bytes(),
            ),
            INVALID,
        ),
    ];
    let n = run(&env, cases).await;
    assert_eq!(n, 5);
    // Still serving.
    let res = env.gw.get(STATE).bearer(&env.good()).send().await;
    env.forwarded("control: after the nesting", &res, "GET", STATE, k);
}
