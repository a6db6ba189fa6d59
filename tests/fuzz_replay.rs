//! Replays every committed fuzz seed (`fuzz/seeds/<target>/`) and regression input
//! (`fuzz/regressions/<target>/`) through the same crate functions the fuzz targets call, so
//! `cargo test` checks the fuzz invariants even where the fuzz toolchain cannot build.
//!
//! A seed's file name says what it must do, so a harness that silently skips everything
//! fails here: `allow-*` is verified and allowed, `verify-*` verified but refused by the
//! route, `refuse-*` refused by `verify`, `public-*` refused by `verify` yet allowed (a public
//! route); `normal-*` normalizes, `ambiguous-*` does not;
//! `valid-*` / `invalid-*` configs parse or do not; `served-*` request heads are served by the
//! gateway's own HTTP/1.1 reader (and read the same by hyper), `handoff-*` go to hyper,
//! `partial-*` are not whole yet. Other names (whole URIs, fuzzer finds) only must not
//! panic.
//!
//! Regenerate the token seeds after changing the fixture:
//! `cargo test --test fuzz_replay -- --ignored write_token_seeds`.

use std::fs;
use std::path::{Path, PathBuf};

use scopegate::fuzzing::{self, raw_input, sign, signed_input, TokenRun};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push((name, fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn token_seeds() {
    let seeds = inputs("token");
    assert!(seeds.len() >= 10, "token seeds are missing");
    for (name, data) in &seeds {
        let run = fuzzing::token(data);
        let (verified, allowed) = match name.split('-').next().unwrap() {
            "allow" => (true, true),
            "verify" => (true, false),
            "refuse" => (false, false),
            "public" => (false, true),
            _ => continue,
        };
        assert_eq!(run, Some(TokenRun { verified, allowed }), "{name}");
    }
}

#[test]
fn path_seeds() {
    let seeds = inputs("path_and_route");
    assert!(seeds.len() >= 10, "path seeds are missing");
    for (name, data) in &seeds {
        let normal = fuzzing::path_and_route(data);
        if name.starts_with("normal-") {
            assert!(normal.is_some(), "{name} should normalize");
        } else if name.starts_with("ambiguous-") {
            assert_eq!(normal, None, "{name} should be refused");
        }
    }
}

#[test]
fn h1_request_seeds() {
    let seeds = inputs("h1_request");
    assert!(seeds.len() >= 8, "h1_request seeds are missing");
    for (name, data) in &seeds {
        let outcome = fuzzing::h1_request(data);
        let want = match name.split('-').next().unwrap() {
            "served" => fuzzing::H1Outcome::Served,
            "handoff" => fuzzing::H1Outcome::HandedOff,
            "partial" => fuzzing::H1Outcome::Partial,
            _ => continue,
        };
        assert_eq!(outcome, want, "{name}");
    }
}

#[test]
fn config_seeds() {
    let seeds = inputs("config");
    assert!(seeds.len() >= 4, "config seeds are missing");
    for (name, data) in &seeds {
        let valid = fuzzing::config(data);
        if name.starts_with("valid-") {
            assert!(valid, "{name} should parse");
        } else if name.starts_with("invalid-") {
            assert!(!valid, "{name} should not parse");
        }
    }
}

/// The harness itself must be able to fail: a broken invariant panics.
#[test]
#[should_panic(expected = "changed its meaning")]
fn path_invariants_can_fail() {
    fuzzing::check_normalized("/a%41", "/aB");
}

const HS256: &str = r#"{"alg":"HS256","kid":"sbk_fuzz256","typ":"JWT"}"#;
const HS384: &str = r#"{"alg":"HS384","kid":"sbk_fuzz384"}"#;
const HS512: &str = r#"{"alg":"HS512","kid":"sbk_fuzz512"}"#;
const OTHER: &str = r#"{"alg":"HS256","kid":"sbk_other"}"#;
/// `exp` in 2100, so the seeds stay valid.
const CLAIMS: &str = r#"{"aud":"https://api.statebacked.dev/","exp":4102444800,"iat":1700000000,"act":{"sub":"user-1"}}"#;

/// (file name, input) of every token seed.
fn token_seed_table() -> Vec<(&'static str, Vec<u8>)> {
    let claims_with = |extra: &str| CLAIMS.replacen('{', &format!("{{{extra},"), 1);
    let valid = sign(0, HS256.as_bytes(), CLAIMS.as_bytes());
    vec![
        // Allowed.
        ("allow-hs256-events", signed_input(0, 0, HS256, CLAIMS)),
        ("allow-hs384-members", signed_input(2, 1, HS384, CLAIMS)),
        ("allow-query-token", signed_input(1, 0, HS256, CLAIMS)),
        ("allow-act-header", signed_input(6, 1, HS384, CLAIMS)),
        ("allow-org-header", signed_input(5, 0, HS256, CLAIMS)),
        (
            "allow-other-org-own-path",
            signed_input(3, 3, OTHER, CLAIMS),
        ),
        ("allow-keys-api", signed_input(4, 1, HS384, CLAIMS)),
        (
            "allow-aud-array",
            signed_input(
                0,
                0,
                HS256,
                &CLAIMS.replace(
                    r#""aud":"https://api.statebacked.dev/""#,
                    r#""aud":["https://other/","https://api.statebacked.dev/"]"#,
                ),
            ),
        ),
        (
            "allow-exp-float",
            signed_input(0, 0, HS256, &CLAIMS.replace("4102444800", "4102444800.5")),
        ),
        (
            "allow-scope-claim-narrowed-enough",
            signed_input(0, 0, HS256, &claims_with(r#""scope":"events.write""#)),
        ),
        ("allow-raw", raw_input(0, &valid)),
        ("public-garbage-token", raw_input(7, "garbage")),
        // Verified, but the request is refused.
        ("verify-missing-scope", signed_input(0, 2, HS512, CLAIMS)),
        (
            "verify-scope-claim-narrows",
            signed_input(0, 0, HS256, &claims_with(r#""scope":["state.read"]"#)),
        ),
        (
            "verify-scope-claim-cannot-widen",
            signed_input(
                0,
                2,
                HS512,
                &claims_with(r#""scope":"events.write machines.read""#),
            ),
        ),
        ("verify-other-org-path", signed_input(2, 3, OTHER, CLAIMS)),
        ("verify-wrong-org-path", signed_input(3, 1, HS384, CLAIMS)),
        ("verify-wrong-org-header", signed_input(5, 3, OTHER, CLAIMS)),
        (
            "verify-act-without-org-keys-write",
            signed_input(6, 0, HS256, CLAIMS),
        ),
        (
            "verify-keys-api-without-scope",
            signed_input(4, 0, HS256, CLAIMS),
        ),
        // Refused by verify.
        (
            "refuse-alg-none",
            signed_input(0, 0, r#"{"alg":"none","kid":"sbk_fuzz256"}"#, CLAIMS),
        ),
        (
            "refuse-alg-NoNe",
            signed_input(0, 0, r#"{"alg":"NoNe","kid":"sbk_fuzz256"}"#, CLAIMS),
        ),
        (
            "refuse-alg-not-the-keys",
            signed_input(0, 0, r#"{"alg":"HS512","kid":"sbk_fuzz256"}"#, CLAIMS),
        ),
        (
            "refuse-alg-rs256",
            signed_input(0, 0, r#"{"alg":"RS256","kid":"sbk_fuzz256"}"#, CLAIMS),
        ),
        (
            "refuse-jwk",
            signed_input(
                0,
                0,
                r#"{"alg":"HS256","kid":"sbk_fuzz256","jwk":{"kty":"oct","k":"AAAA"}}"#,
                CLAIMS,
            ),
        ),
        (
            "refuse-jku",
            signed_input(
                0,
                0,
                r#"{"alg":"HS256","kid":"sbk_fuzz256","jku":"https://evil/"}"#,
                CLAIMS,
            ),
        ),
        (
            "refuse-crit",
            signed_input(
                0,
                0,
                r#"{"alg":"HS256","kid":"sbk_fuzz256","crit":["exp"]}"#,
                CLAIMS,
            ),
        ),
        (
            "refuse-kid-traversal",
            signed_input(0, 0, r#"{"alg":"HS256","kid":"../org_fuzz"}"#, CLAIMS),
        ),
        (
            "refuse-kid-number",
            signed_input(0, 0, r#"{"alg":"HS256","kid":7}"#, CLAIMS),
        ),
        (
            "refuse-no-kid",
            signed_input(0, 0, r#"{"alg":"HS256"}"#, CLAIMS),
        ),
        ("refuse-forged", signed_input(0, 4, HS256, CLAIMS)),
        (
            "refuse-expired",
            signed_input(0, 0, HS256, &CLAIMS.replace("4102444800", "1000000000")),
        ),
        (
            "refuse-exp-string",
            signed_input(0, 0, HS256, &CLAIMS.replace("4102444800", "\"4102444800\"")),
        ),
        (
            "refuse-exp-negative",
            signed_input(0, 0, HS256, &CLAIMS.replace("4102444800", "-1")),
        ),
        (
            "refuse-no-exp",
            signed_input(0, 0, HS256, r#"{"aud":"https://api.statebacked.dev/"}"#),
        ),
        (
            "refuse-nbf-future",
            signed_input(0, 0, HS256, &claims_with(r#""nbf":4102444000"#)),
        ),
        (
            "refuse-iat-future",
            signed_input(0, 0, HS256, &CLAIMS.replace("1700000000", "4102444000")),
        ),
        (
            "refuse-iat-string",
            signed_input(0, 0, HS256, &CLAIMS.replace("1700000000", "\"1\"")),
        ),
        (
            "refuse-wrong-aud",
            signed_input(
                0,
                0,
                HS256,
                &CLAIMS.replace("api.statebacked.dev", "evil.example"),
            ),
        ),
        (
            "refuse-duplicate-exp",
            signed_input(0, 0, HS256, &claims_with(r#""exp":1"#)),
        ),
        ("refuse-payload-array", signed_input(0, 0, HS256, "[1,2,3]")),
        ("refuse-padding", raw_input(0, &format!("{valid}="))),
        (
            "refuse-whitespace",
            raw_input(0, &valid.replacen('.', ". ", 1)),
        ),
        (
            "refuse-two-segments",
            raw_input(0, valid.rsplit_once('.').unwrap().0),
        ),
        (
            "refuse-four-segments",
            raw_input(0, &format!("{valid}.e30")),
        ),
        (
            "refuse-stripped-signature",
            raw_input(0, &format!("{}.", valid.rsplit_once('.').unwrap().0)),
        ),
        (
            "refuse-truncated-signature",
            raw_input(0, &valid[..valid.len() - 2]),
        ),
        // Last character changed: the decoded bytes differ only in bits base64url leaves
        // unused, so only a canonical-encoding check refuses it.
        (
            "refuse-non-canonical-signature",
            raw_input(0, &{
                let mut t = valid.clone();
                let last = t.pop().unwrap();
                let idx = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                    .iter()
                    .position(|&c| c == last as u8)
                    .unwrap();
                t.push(char::from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[idx ^ 1],
                ));
                t
            }),
        ),
    ]
}

#[test]
#[ignore = "writes fuzz/seeds/token; run by hand after changing the fixture"]
fn write_token_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/token");
    fs::create_dir_all(&dir).unwrap();
    for (name, data) in token_seed_table() {
        fs::write(dir.join(name), data).unwrap();
    }
}

/// The committed token seeds are the table above: the fixture and the seeds cannot drift.
#[test]
fn token_seeds_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/token");
    for (name, data) in token_seed_table() {
        let committed = fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            committed == data,
            "fuzz/seeds/token/{name} is stale: run write_token_seeds"
        );
    }
}

/// How deep a generated corpus reaches: `cargo test --test fuzz_replay -- --ignored
/// corpus_outcomes --nocapture` after a fuzz run (reads fuzz/corpus/token, not committed).
#[test]
#[ignore = "reads the generated corpus of a local fuzz run"]
fn corpus_outcomes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/token");
    let (mut total, mut skipped, mut verified, mut allowed) = (0, 0, 0, 0);
    for entry in fs::read_dir(dir).unwrap() {
        total += 1;
        match fuzzing::token(&fs::read(entry.unwrap().path()).unwrap()) {
            None => skipped += 1,
            Some(run) => {
                verified += usize::from(run.verified);
                allowed += usize::from(run.allowed);
            }
        }
    }
    println!("{total} inputs: {skipped} skipped, {verified} verified, {allowed} allowed");
}
