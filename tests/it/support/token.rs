//! Token minting for tests, independent of the gateway's own signing code.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use sha2::Sha256;

#[derive(Debug, Clone)]
pub struct TestKey {
    pub id: String,
    pub secret: String,
    pub org: String,
    pub algorithm: Algorithm,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds a token's claims; `sign()` finishes it.
pub struct Mint {
    key: TestKey,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

/// A valid token for `key`: State Backed's shape, aud api.statebacked.dev, 1 hour.
pub fn mint(key: &TestKey) -> Mint {
    let now = now();
    let alg = format!("{:?}", key.algorithm);
    let mut header = Map::new();
    header.insert("alg".into(), json!(alg));
    header.insert("kid".into(), json!(key.id));
    let mut claims = Map::new();
    claims.insert("act".into(), json!({"sub": "user-1"}));
    claims.insert("aud".into(), json!("https://api.statebacked.dev/"));
    claims.insert("exp".into(), json!(now + 3600));
    claims.insert("iss".into(), json!("https://test.example/"));
    claims.insert("iat".into(), json!(now));
    Mint {
        key: key.clone(),
        header,
        claims,
    }
}

impl Mint {
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.header.insert(name.into(), value);
        self
    }

    /// Signs with the key's algorithm and secret (whatever the header says).
    pub fn sign(self) -> String {
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.header).unwrap());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.claims).unwrap());
        let message = format!("{header}.{payload}");
        let sig = hmac_sign(
            self.key.algorithm,
            self.key.secret.as_bytes(),
            message.as_bytes(),
        );
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Signs with another secret (a forged token).
    pub fn sign_with(mut self, secret: &str) -> String {
        self.key.secret = secret.to_owned();
        self.sign()
    }
}

fn hmac_sign(alg: Algorithm, secret: &[u8], message: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::HS256 => {
            let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        Algorithm::HS384 => {
            let mut m = Hmac::<sha2::Sha384>::new_from_slice(secret).unwrap();
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        Algorithm::HS512 => {
            let mut m = Hmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        other => {
            // Sign through jsonwebtoken for anything else (tests of refused algorithms).
            let t = jsonwebtoken::encode(
                &Header::new(other),
                &json!({}),
                &EncodingKey::from_secret(secret),
            )
            .unwrap();
            URL_SAFE_NO_PAD
                .decode(t.rsplit('.').next().unwrap())
                .unwrap()
        }
    }
}

/// A token built byte for byte the way State Backed's token library (`@statebacked/token`,
/// `signToken`) builds it: jose's `SignJWT({act: claims})` with protected header
/// `{"alg":"HS256","kid":…}`, then `setAudience`, `setExpirationTime`, `setIssuer`,
/// `setIssuedAt` — so the payload keys come in the order act, aud, exp, iss, iat — signed
/// with HMAC-SHA256 over the secret's UTF-8 bytes.
pub fn state_backed_token(
    key_id: &str,
    secret: &str,
    act_json: &str,
    iat: u64,
    exp: u64,
) -> String {
    let header = format!(r#"{{"alg":"HS256","kid":"{key_id}"}}"#);
    let payload = format!(
        r#"{{"act":{act_json},"aud":"https://api.statebacked.dev/","exp":{exp},"iss":"https://{key_id}.client.statebacked.dev/","iat":{iat}}}"#
    );
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.as_bytes()),
        URL_SAFE_NO_PAD.encode(payload.as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{message}.{sig}")
}
