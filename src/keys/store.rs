//! The on-disk key store: one TOML file per organization, `<org id>.toml`, in one folder.
//!
//! Readers (the gateway) only ever see whole files: writers take an exclusive lock on
//! `.scopegate.lock`, write a hidden temp file with mode 0600, fsync it, and rename it over the
//! old file, so a reader sees the old content or the new, never half of either. Files whose
//! names start with `.` are never read, which covers temp files and Kubernetes' `..data`
//! bookkeeping entries.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Key, Mac, OrgKeys};
use crate::exchange::org::OrgExchange;
use crate::exchange::records::{AnonymousRecord, IdpRecord, TokenProviderRecord};
use crate::scopes::{Catalog, ScopeSet};

pub const LOCK_FILE: &str = ".scopegate.lock";
pub const KEY_ID_PREFIX: &str = "sbk_";
pub const SECRET_PREFIX: &str = "sbsec_";
pub const ORG_ID_PREFIX: &str = "org_";
/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output. 32 bytes covers
/// HS256; generated secrets carry 32 random bytes (256 bits) plus the prefix.
pub const MIN_SECRET_BYTES: usize = 32;
const MAX_NAME_CHARS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{file}:{line}: {message}", line = line.map(|l| l.to_string()).unwrap_or_else(|| "-".into()))]
    Invalid {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An organization's file, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgFile {
    pub org: OrgRecord,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// Token exchange: anonymous sessions, identity providers, token providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<AnonymousRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idps: Vec<IdpRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_providers: Vec<TokenProviderRecord>,
}

impl OrgFile {
    /// An organization's file with keys and no token-exchange settings.
    pub fn new(org: OrgRecord, keys: Vec<KeyRecord>) -> Self {
        OrgFile {
            org,
            keys,
            anonymous: None,
            idps: Vec::new(),
            token_providers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrgRecord {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// The HMAC secret; its UTF-8 bytes are the key, as State Backed's token library signs.
    pub secret: String,
    pub scopes: Vec<String>,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    pub created_at: String,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn default_algorithm() -> String {
    "HS256".to_owned()
}

/// The same file shape, with spans, for error lines on load.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpannedOrgFile {
    org: OrgRecord,
    #[serde(default)]
    keys: Vec<Spanned<KeyRecord>>,
    #[serde(default)]
    anonymous: Option<AnonymousRecord>,
    #[serde(default)]
    idps: Vec<IdpRecord>,
    #[serde(default)]
    token_providers: Vec<TokenProviderRecord>,
}

/// What a listing shows about a key: never its secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub org: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub algorithm: String,
    pub created_at: String,
}

/// A safe organization id: a file name that cannot traverse or hide.
pub fn valid_org_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A key id as State Backed spells it: `sbk_` and then letters, digits, `_` or `-`.
pub fn valid_key_id(id: &str) -> bool {
    id.len() <= 128
        && id.strip_prefix(KEY_ID_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        _ => None,
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    buf
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn new_org_id() -> String {
    format!("{ORG_ID_PREFIX}{}", hex(&random_bytes::<12>()))
}

pub fn new_key_id() -> String {
    format!("{KEY_ID_PREFIX}{}", hex(&random_bytes::<12>()))
}

/// 256 bits from the OS CSPRNG, base64url.
pub fn new_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn valid_name(name: &str) -> Result<(), String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("name must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(())
}

/// Parses and checks one organization file. `file` must be named `<org id>.toml`.
pub fn parse_org_file(file: &Path, text: &str, catalog: &Catalog) -> Result<OrgKeys, StoreError> {
    let invalid = |line: Option<usize>, message: String| StoreError::Invalid {
        file: file.to_owned(),
        line,
        message,
    };
    let parsed: SpannedOrgFile = toml::from_str(text).map_err(|e| {
        invalid(
            e.span().map(|s| crate::config::line_of(text, s.start)),
            e.message().trim().to_owned(),
        )
    })?;
    let org = &parsed.org;
    if !valid_org_id(&org.id) {
        return Err(invalid(
            None,
            format!("org id {:?} is not a safe id", org.id),
        ));
    }
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != org.id {
        return Err(invalid(
            None,
            format!("file holds org '{}' but is named '{stem}.toml'", org.id),
        ));
    }
    let org_id: Arc<str> = Arc::from(org.id.as_str());
    let mut keys: Vec<Arc<Key>> = Vec::with_capacity(parsed.keys.len());
    for spanned in &parsed.keys {
        let line = Some(crate::config::line_of(text, spanned.span().start));
        let k = spanned.get_ref();
        if !valid_key_id(&k.id) {
            return Err(invalid(
                line,
                format!("key id {:?} is not a valid sbk_ id", k.id),
            ));
        }
        if keys.iter().any(|existing| *existing.id == *k.id) {
            return Err(invalid(line, format!("key id '{}' appears twice", k.id)));
        }
        if k.secret.len() < MIN_SECRET_BYTES {
            return Err(invalid(
                line,
                format!(
                    "key '{}': secret is shorter than {MIN_SECRET_BYTES} bytes",
                    k.id
                ),
            ));
        }
        let Some(algorithm) = parse_algorithm(&k.algorithm) else {
            return Err(invalid(
                line,
                format!(
                    "key '{}': algorithm '{}' is not one of HS256, HS384, HS512",
                    k.id, k.algorithm
                ),
            ));
        };
        if let Some(unknown) = k.scopes.iter().find(|s| !catalog.contains(s)) {
            return Err(invalid(
                line,
                format!(
                    "key '{}': unknown scope '{unknown}' (declare it in [auth] extra_scopes)",
                    k.id
                ),
            ));
        }
        let scopes = ScopeSet::from_names(&k.scopes);
        let scopes_header = http::HeaderValue::from_str(&scopes.joined())
            .expect("scope names are validated header-safe");
        keys.push(Arc::new(Key {
            id: Arc::from(k.id.as_str()),
            org: org_id.clone(),
            name: k.name.clone(),
            scopes,
            algorithm,
            mac: Mac::new(algorithm, k.secret.as_bytes()).expect("an HMAC algorithm"),
            signing: crate::exchange::signing_key(&k.secret),
            scopes_header,
            id_header: http::HeaderValue::from_str(&k.id)
                .expect("key ids are validated header-safe"),
            org_header: http::HeaderValue::from_str(&org_id)
                .expect("org ids are validated header-safe"),
            created_at: k.created_at.clone(),
        }));
    }
    let exchange = OrgExchange::build(
        &parsed.idps,
        &parsed.token_providers,
        parsed.anonymous.as_ref(),
        &keys,
        catalog,
    )
    .map_err(|e| invalid(None, e))?;
    Ok(OrgKeys {
        org: org_id,
        name: org.name.clone(),
        keys,
        exchange: std::sync::Arc::new(exchange),
    })
}

/// The key files of a folder: `*.toml`, not hidden, following symlinks to regular files.
pub fn org_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// What identifies a version of a file without reading it: a rename, a write or a symlink
/// swap changes at least one of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

pub fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let m = fs::metadata(path)?;
    Ok(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    })
}

/// The folder of key files, for writers (the CLI, the keys API).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    catalog: Catalog,
}

/// Held while a writer works; dropping it releases the lock.
struct Lock(#[allow(dead_code)] File);

impl Store {
    pub fn new(dir: impl Into<PathBuf>, catalog: Catalog) -> Self {
        Store {
            dir: dir.into(),
            catalog,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Lock, StoreError> {
        create_private_dir(&self.dir)?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(Lock(file))
    }

    fn org_path(&self, org: &str) -> Result<PathBuf, StoreError> {
        if !valid_org_id(org) {
            return Err(StoreError::BadInput(format!(
                "{org:?} is not a valid organization id"
            )));
        }
        Ok(self.dir.join(format!("{org}.toml")))
    }

    fn read(&self, path: &Path) -> Result<OrgFile, StoreError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        // Validate with the same rules the gateway applies before trusting the content.
        parse_org_file(path, &text, &self.catalog)?;
        toml::from_str(&text).map_err(|e| StoreError::Invalid {
            file: path.to_owned(),
            line: None,
            message: e.message().to_owned(),
        })
    }

    fn write(&self, path: &Path, file: &OrgFile) -> Result<(), StoreError> {
        let mut text = String::from(
            "# scopegate keys of one organization. Managed by `scopegate keys`: the gateway\n\
             # reloads this file when it changes. Secrets are below: keep this file 0600.\n",
        );
        text.push_str(&toml::to_string_pretty(file).expect("key files serialize"));
        let tmp = self.dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("org"),
            hex(&random_bytes::<6>())
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io(path))
    }

    /// Creates an organization with a fresh id.
    pub fn create_org(&self, name: &str) -> Result<OrgRecord, StoreError> {
        valid_name(name).map_err(StoreError::BadInput)?;
        let _lock = self.lock()?;
        let record = OrgRecord {
            id: new_org_id(),
            name: name.to_owned(),
            created_at: now_rfc3339(),
        };
        let path = self.org_path(&record.id)?;
        self.write(&path, &OrgFile::new(record.clone(), Vec::new()))?;
        Ok(record)
    }

    pub fn list_orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let files = org_files(&self.dir).map_err(io(&self.dir))?;
        files.iter().map(|p| self.read(p).map(|f| f.org)).collect()
    }

    /// Creates a key in `org` and returns it, secret included: the only time it is shown.
    pub fn create_key(
        &self,
        org: &str,
        name: &str,
        scopes: &[String],
        algorithm: Algorithm,
    ) -> Result<KeyRecord, StoreError> {
        valid_name(name).map_err(StoreError::BadInput)?;
        if scopes.is_empty() {
            return Err(StoreError::BadInput(
                "a key needs at least one scope".into(),
            ));
        }
        if let Some(bad) = scopes.iter().find(|s| !self.catalog.contains(s)) {
            return Err(StoreError::BadInput(format!("unknown scope '{bad}'")));
        }
        let alg_name = match algorithm {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            other => {
                return Err(StoreError::BadInput(format!(
                    "keys sign with HMAC; {other:?} is not supported"
                )))
            }
        };
        let record = KeyRecord {
            id: new_key_id(),
            name: name.to_owned(),
            secret: new_secret(),
            scopes: ScopeSet::from_names(scopes)
                .iter()
                .map(str::to_owned)
                .collect(),
            algorithm: alg_name.to_owned(),
            created_at: now_rfc3339(),
        };
        self.update_org(org, |file| {
            file.keys.push(record.clone());
            Ok(())
        })?;
        Ok(record)
    }

    /// Lists keys, of one organization or all; never secrets.
    pub fn list_keys(&self, org: Option<&str>) -> Result<Vec<KeyInfo>, StoreError> {
        let files = match org {
            Some(org) => {
                let path = self.org_path(org)?;
                if !path.exists() {
                    return Err(StoreError::NotFound(format!("no organization '{org}'")));
                }
                vec![path]
            }
            None if !self.dir.exists() => Vec::new(),
            None => org_files(&self.dir).map_err(io(&self.dir))?,
        };
        let mut out = Vec::new();
        for path in files {
            let file = self.read(&path)?;
            out.extend(file.keys.into_iter().map(|k| KeyInfo {
                id: k.id,
                org: file.org.id.clone(),
                name: k.name,
                scopes: k.scopes,
                algorithm: k.algorithm,
                created_at: k.created_at,
            }));
        }
        Ok(out)
    }

    /// Finds a key's secret record, for tools that sign with a stored key.
    pub fn find_key(&self, key_id: &str) -> Result<Option<(String, KeyRecord)>, StoreError> {
        if !valid_key_id(key_id) || !self.dir.exists() {
            return Ok(None);
        }
        for path in org_files(&self.dir).map_err(io(&self.dir))? {
            let file = self.read(&path)?;
            if let Some(k) = file.keys.into_iter().find(|k| k.id == key_id) {
                return Ok(Some((file.org.id, k)));
            }
        }
        Ok(None)
    }

    /// Reads, changes and rewrites one organization's file under the lock. The new content is
    /// checked with the same rules the gateway applies before it replaces the old one, so a
    /// change that would break the file is refused and the file is left as it was.
    pub fn update_org<T>(
        &self,
        org: &str,
        change: impl FnOnce(&mut OrgFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = self.org_path(org)?;
        let _lock = self.lock()?;
        if !path.exists() {
            return Err(StoreError::NotFound(format!("no organization '{org}'")));
        }
        let mut file = self.read(&path)?;
        let out = change(&mut file)?;
        let text = toml::to_string_pretty(&file).expect("key files serialize");
        parse_org_file(&path, &text, &self.catalog).map_err(|e| match e {
            StoreError::Invalid { message, .. } => StoreError::BadInput(message),
            other => other,
        })?;
        self.write(&path, &file)?;
        Ok(out)
    }

    /// Reads one organization's file (token-exchange settings included).
    pub fn org_file(&self, org: &str) -> Result<OrgFile, StoreError> {
        let path = self.org_path(org)?;
        if !path.exists() {
            return Err(StoreError::NotFound(format!("no organization '{org}'")));
        }
        self.read(&path)
    }

    /// Adds an identity provider, or replaces the one with the same audience and issuer.
    pub fn upsert_idp(&self, org: &str, record: IdpRecord) -> Result<(), StoreError> {
        self.update_org(org, |file| {
            match file.idps.iter_mut().find(|i| i.same_provider(&record)) {
                Some(existing) => *existing = record,
                None => file.idps.push(record),
            }
            Ok(())
        })
    }

    pub fn delete_idp(
        &self,
        org: &str,
        audience: Option<&str>,
        issuer: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_org(org, |file| {
            let before = file.idps.len();
            file.idps
                .retain(|i| !(i.audience.as_deref() == audience && i.issuer.as_deref() == issuer));
            if file.idps.len() == before {
                return Err(StoreError::NotFound(
                    "no identity provider with that audience and issuer".into(),
                ));
            }
            Ok(())
        })
    }

    /// Adds a token provider, or replaces the one with the same service.
    pub fn upsert_token_provider(
        &self,
        org: &str,
        record: TokenProviderRecord,
    ) -> Result<(), StoreError> {
        self.update_org(org, |file| {
            if !file.keys.iter().any(|k| k.id == record.key) {
                return Err(StoreError::BadInput(format!(
                    "{} is not a key of organization {org}",
                    record.key
                )));
            }
            match file
                .token_providers
                .iter_mut()
                .find(|p| p.service == record.service)
            {
                Some(existing) => *existing = record,
                None => file.token_providers.push(record),
            }
            Ok(())
        })
    }

    pub fn delete_token_provider(&self, org: &str, service: &str) -> Result<(), StoreError> {
        self.update_org(org, |file| {
            let before = file.token_providers.len();
            file.token_providers.retain(|p| p.service != service);
            if file.token_providers.len() == before {
                return Err(StoreError::NotFound(format!(
                    "no token provider for service '{service}'"
                )));
            }
            Ok(())
        })
    }

    /// Turns anonymous sessions on (with their settings) or off.
    pub fn set_anonymous(
        &self,
        org: &str,
        record: Option<AnonymousRecord>,
    ) -> Result<(), StoreError> {
        self.update_org(org, |file| {
            let production = crate::scopes::scopes_for_use(crate::scopes::KeyUse::Production);
            if let Some(r) = record.as_ref().filter(|r| r.enabled) {
                let usable = file.keys.iter().any(|k| {
                    r.key.as_ref().is_none_or(|id| *id == k.id)
                        && production.iter().all(|s| ScopeSet::from_names(&k.scopes).contains(s))
                });
                if !usable {
                    return Err(StoreError::BadInput(match &r.key {
                        Some(id) => format!(
                            "{id} is not a production-use key of organization {org} (it must hold {})",
                            production.join(" ")
                        ),
                        None => format!(
                            "organization {org} has no production-use key to sign anonymous tokens \
                             (scopegate keys create --org {org} --use production --name anonymous)"
                        ),
                    }));
                }
            }
            file.anonymous = record;
            Ok(())
        })
    }

    /// Deletes a key of one organization. A key of another organization is `NotFound`, so
    /// ids of other organizations cannot be probed.
    pub fn delete_key_in_org(&self, org: &str, key_id: &str) -> Result<(), StoreError> {
        if !valid_key_id(key_id) {
            return Err(StoreError::NotFound(format!("no key '{key_id}'")));
        }
        self.update_org(org, |file| {
            let before = file.keys.len();
            file.keys.retain(|k| k.id != key_id);
            if file.keys.len() == before {
                return Err(StoreError::NotFound(format!("no key '{key_id}'")));
            }
            Ok(())
        })
    }

    /// Deletes a key wherever it is. Returns the organization it belonged to.
    pub fn delete_key(&self, key_id: &str) -> Result<String, StoreError> {
        if !valid_key_id(key_id) {
            return Err(StoreError::BadInput(format!(
                "{key_id:?} is not a valid key id"
            )));
        }
        let _lock = self.lock()?;
        for path in org_files(&self.dir).map_err(io(&self.dir))? {
            let mut file = self.read(&path)?;
            let before = file.keys.len();
            file.keys.retain(|k| k.id != key_id);
            if file.keys.len() != before {
                self.write(&path, &file)?;
                return Ok(file.org.id);
            }
        }
        Err(StoreError::NotFound(format!("no key '{key_id}'")))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("keys"), Catalog::default());
        (dir, store)
    }

    #[test]
    fn create_list_delete_round_trip() {
        let (_d, store) = store();
        let org = store.create_org("Acme").unwrap();
        let key = store
            .create_key(&org.id, "ci", &["machines.read".into()], Algorithm::HS256)
            .unwrap();
        assert!(key.secret.starts_with(SECRET_PREFIX));
        assert!(key.secret.len() >= SECRET_PREFIX.len() + 43);
        let listed = store.list_keys(Some(&org.id)).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, key.id);
        assert_eq!(store.delete_key(&key.id).unwrap(), org.id);
        assert!(store.list_keys(None).unwrap().is_empty());
        assert!(matches!(
            store.delete_key(&key.id),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn files_are_private_and_no_temp_files_remain() {
        let (_d, store) = store();
        let org = store.create_org("Acme").unwrap();
        let path = store.dir().join(format!("{}.toml", org.id));
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn traversal_through_ids_is_refused() {
        let (_d, store) = store();
        for bad in ["../etc", "a/b", ".hidden", "", "x\0y"] {
            assert!(
                matches!(store.list_keys(Some(bad)), Err(StoreError::BadInput(_))),
                "{bad:?}"
            );
        }
        assert!(!valid_key_id("sbk_../../x"));
        assert!(!valid_key_id("sbk_"));
        assert!(valid_key_id("sbk_abc-DEF_1"));
    }

    #[test]
    fn unknown_scopes_are_refused_with_the_line() {
        let text = "[org]\nid = \"org_a\"\nname = \"A\"\ncreated_at = \"x\"\n\n[[keys]]\nid = \"sbk_1\"\nname = \"k\"\nsecret = \"sbsec_0123456789012345678901234567890123\"\nscopes = [\"nope.read\"]\ncreated_at = \"x\"\n";
        let err = parse_org_file(Path::new("/k/org_a.toml"), text, &Catalog::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("org_a.toml:6"), "{err}");
        assert!(err.contains("nope.read"), "{err}");
    }

    #[test]
    fn file_name_must_match_the_org() {
        let text = "[org]\nid = \"org_a\"\nname = \"A\"\ncreated_at = \"x\"\n";
        let err = parse_org_file(Path::new("/k/org_b.toml"), text, &Catalog::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("org_b.toml"), "{err}");
    }

    #[test]
    fn short_secrets_are_refused() {
        let text = "[org]\nid = \"org_a\"\nname = \"A\"\ncreated_at = \"x\"\n[[keys]]\nid = \"sbk_1\"\nname = \"k\"\nsecret = \"short\"\nscopes = []\ncreated_at = \"x\"\n";
        let err = parse_org_file(Path::new("/k/org_a.toml"), text, &Catalog::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorter"), "{err}");
        assert!(
            !err.contains("short\""),
            "the secret must not be echoed: {err}"
        );
    }
}
