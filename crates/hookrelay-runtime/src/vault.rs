//! Secrets at rest: endpoint signing secrets and custom header values are stored sealed
//! with AES-256-GCM under `HOOKRELAY_ENCRYPTION_KEY`, so a dump or a replica of the
//! database cannot sign a webhook.
//!
//! A sealed value is text: `hrsealed:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`.
//! - The nonce is 12 random bytes, new for every value.
//! - The key id (8 hex digits of a SHA-256 of the key) names the key that sealed it, so a
//!   rotation can run while rows are sealed under either key.
//! - The associated data is the value's place (`endpoints/<id>/secret`,
//!   `endpoints/<id>/headers/<name>`): a sealed value copied onto another endpoint or field
//!   does not open.
//!
//! A value without the prefix is stored in clear: rows written without a key. The writer
//! seals those at its next start with a key, and `hookrelay reencrypt` moves every row under
//! the current key during a rotation (`HOOKRELAY_ENCRYPTION_KEY_PREVIOUS` then names the old
//! one, which still opens what it sealed).

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use sha2::{Digest, Sha256};

use crate::config::Source;

pub const KEY_VAR: &str = "HOOKRELAY_ENCRYPTION_KEY";
pub const PREVIOUS_KEY_VAR: &str = "HOOKRELAY_ENCRYPTION_KEY_PREVIOUS";

/// What `/readyz` and the start log say while secrets are stored in clear.
pub const CLEAR_WARNING: &str =
    "HOOKRELAY_ENCRYPTION_KEY is not set: endpoint secrets and custom header values are stored in clear";

const PREFIX: &str = "hrsealed:v1:";
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{var} must be 32 bytes in base64 (make one with `openssl rand -base64 32`): {why}")]
    BadKey { var: &'static str, why: String },
    #[error("{var} and {other} hold the same key")]
    SameKey { var: &'static str, other: &'static str },
    #[error("{var} is set without {KEY_VAR}: set the new key as {KEY_VAR}")]
    PreviousWithoutCurrent { var: &'static str },
    #[error("a value is sealed under encryption key {0}, which neither {KEY_VAR} nor {PREVIOUS_KEY_VAR} holds")]
    UnknownKey(String),
    #[error("a sealed value at {0} is damaged or was moved from another place")]
    Damaged(String),
}

struct Key {
    id: String,
    cipher: LessSafeKey,
}

impl Key {
    fn parse(var: &'static str, text: &str) -> Result<Self, VaultError> {
        let bad = |why: &str| VaultError::BadKey {
            var,
            why: why.to_owned(),
        };
        let bytes = STANDARD
            .decode(text.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim().trim_end_matches('=')))
            .map_err(|_| bad("not base64"))?;
        if bytes.len() != KEY_BYTES {
            return Err(bad(&format!("it decodes to {} bytes", bytes.len())));
        }
        let cipher = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| bad("refused by AES-256-GCM"))?;
        Ok(Self {
            id: key_id(&bytes),
            cipher: LessSafeKey::new(cipher),
        })
    }
}

fn key_id(bytes: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"hookrelay key id\0")
        .chain_update(bytes)
        .finalize();
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys of this process: the current one seals, either one opens.
pub struct Keyring {
    current: Option<Key>,
    previous: Option<Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

impl Keyring {
    /// No key: values are stored in clear (and sealed ones cannot be opened).
    pub fn clear() -> Self {
        Self {
            current: None,
            previous: None,
            random: SystemRandom::new(),
        }
    }

    /// From base64 keys; `previous` only beside a `current`.
    pub fn new(current: Option<&str>, previous: Option<&str>) -> Result<Self, VaultError> {
        let current = current.filter(|k| !k.trim().is_empty());
        let previous = previous.filter(|k| !k.trim().is_empty());
        if current.is_none() && previous.is_some() {
            return Err(VaultError::PreviousWithoutCurrent { var: PREVIOUS_KEY_VAR });
        }
        let current = current.map(|k| Key::parse(KEY_VAR, k)).transpose()?;
        let previous = previous.map(|k| Key::parse(PREVIOUS_KEY_VAR, k)).transpose()?;
        if let (Some(c), Some(p)) = (&current, &previous)
            && c.id == p.id
        {
            return Err(VaultError::SameKey {
                var: PREVIOUS_KEY_VAR,
                other: KEY_VAR,
            });
        }
        Ok(Self {
            current,
            previous,
            random: SystemRandom::new(),
        })
    }

    /// `HOOKRELAY_ENCRYPTION_KEY` and `HOOKRELAY_ENCRYPTION_KEY_PREVIOUS`.
    pub fn from_source(src: &Source) -> anyhow::Result<Self> {
        Ok(Self::new(src.raw(KEY_VAR), src.raw(PREVIOUS_KEY_VAR))?)
    }

    /// Whether new values are sealed (a current key is set).
    pub fn seals(&self) -> bool {
        self.current.is_some()
    }

    /// The current key's id.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// Whether a previous key is set.
    pub fn knows_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// Whether a value sealed under `id` opens here.
    pub fn knows(&self, id: &str) -> bool {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .any(|k| k.id == id)
    }

    /// `value` as stored at `place`: sealed under the current key, or in clear without one.
    pub fn seal(&self, place: &str, value: &str) -> String {
        let Some(key) = &self.current else {
            return value.to_owned();
        };
        let mut nonce = [0u8; NONCE_LEN];
        // The system's random source does not fail on the platforms hookrelay runs on.
        self.random
            .fill(&mut nonce)
            .unwrap_or_else(|_| panic!("the system random source failed"));
        let mut sealed = value.as_bytes().to_vec();
        key.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut sealed,
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM seals values of any size hookrelay stores"));
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, URL_SAFE_NO_PAD.encode(out))
    }

    /// The value stored at `place`, opened when it is sealed.
    pub fn open(&self, place: &str, stored: &str) -> Result<String, VaultError> {
        let Some((id, body)) = sealed_parts(stored) else {
            return Ok(stored.to_owned());
        };
        let key = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or_else(|| VaultError::UnknownKey(id.to_owned()))?;
        let damaged = || VaultError::Damaged(place.to_owned());
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| damaged())?;
        if bytes.len() < NONCE_LEN {
            return Err(damaged());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut in_out = sealed.to_vec();
        let clear = key
            .cipher
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut in_out)
            .map_err(|_| damaged())?;
        String::from_utf8(clear.to_vec()).map_err(|_| damaged())
    }

    /// Whether `stored` should be sealed again: it is in clear while a key is set, or sealed
    /// under a key other than the current one.
    pub fn stale(&self, stored: &str) -> bool {
        match (&self.current, sealed_parts(stored)) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(key), Some((id, _))) => key.id != id,
        }
    }
}

/// The key id and body of a sealed value; `None` for a value in clear.
fn sealed_parts(stored: &str) -> Option<(&str, &str)> {
    stored.strip_prefix(PREFIX)?.split_once(':')
}

/// Whether `value` looks sealed. Values a user writes must not, or they could not be told
/// apart from sealed ones.
pub fn looks_sealed(value: &str) -> bool {
    value.starts_with("hrsealed:")
}

/// The key id a stored value is sealed under (`None` in clear).
pub fn sealed_key_id(stored: &str) -> Option<&str> {
    sealed_parts(stored).map(|(id, _)| id)
}

/// Where an endpoint's signing secrets are stored: the current one, and the previous one
/// during a rotation's grace period (a rotation moves the sealed value as it is).
pub fn secret_place(endpoint_id: &str) -> String {
    format!("endpoints/{endpoint_id}/secret")
}

/// Where an endpoint's custom header `name` is stored.
pub fn header_place(endpoint_id: &str, name: &str) -> String {
    format!("endpoints/{endpoint_id}/headers/{name}")
}

/// An endpoint's custom headers (a JSON object of strings) with every value sealed or
/// opened by `f`.
pub fn map_headers<E>(
    endpoint_id: &str,
    headers: &serde_json::Value,
    mut f: impl FnMut(&str, &str) -> Result<String, E>,
) -> Result<serde_json::Value, E> {
    let Some(map) = headers.as_object() else {
        return Ok(headers.clone());
    };
    let mut out = serde_json::Map::with_capacity(map.len());
    for (name, value) in map {
        let mapped = match value.as_str() {
            Some(v) => serde_json::Value::String(f(&header_place(endpoint_id, name), v)?),
            None => value.clone(),
        };
        out.insert(name.clone(), mapped);
    }
    Ok(serde_json::Value::Object(out))
}

/// The ids of the keys values in `endpoints` are sealed under.
pub async fn stored_key_ids(db: &sqlx::PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT k FROM (
             SELECT substring(secret FROM '^hrsealed:v1:([0-9a-f]+):') AS k FROM endpoints
             UNION ALL
             SELECT substring(previous_secret FROM '^hrsealed:v1:([0-9a-f]+):') FROM endpoints
             UNION ALL
             SELECT substring(h.value FROM '^hrsealed:v1:([0-9a-f]+):')
             FROM endpoints, jsonb_each_text(CASE jsonb_typeof(headers) WHEN 'object' THEN headers ELSE '{}' END) h
         ) keys WHERE k IS NOT NULL ORDER BY k",
    )
    .fetch_all(db)
    .await
}

/// At a service's start: every sealed value in `endpoints` opens under `keys` (else the
/// error names the missing key), and `ready` warns while values are stored in clear.
pub async fn check_at_start(db: &sqlx::PgPool, keys: &Keyring, ready: &crate::Readiness) -> anyhow::Result<()> {
    let unknown: Vec<String> = stored_key_ids(db)
        .await?
        .into_iter()
        .filter(|id| !keys.knows(id))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "endpoint secrets are sealed under encryption key {}, which neither {KEY_VAR} nor {PREVIOUS_KEY_VAR} holds{}",
            unknown.join(", "),
            match keys.current_id() {
                Some(id) => format!(" (the current key is {id})"),
                None => " (no key is set)".to_owned(),
            }
        );
    }
    if !keys.seals() {
        ready.warn(CLEAR_WARNING);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn a_sealed_value_opens_at_its_place_only() {
        let ring = Keyring::new(Some(KEY_A), None).unwrap();
        let sealed = ring.seal("endpoints/ep_1/secret", "whsec_abc");
        assert!(sealed.starts_with("hrsealed:v1:"), "{sealed}");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(ring.open("endpoints/ep_1/secret", &sealed).unwrap(), "whsec_abc");
        assert!(matches!(
            ring.open("endpoints/ep_2/secret", &sealed),
            Err(VaultError::Damaged(_))
        ));
    }

    #[test]
    fn every_seal_uses_a_new_nonce() {
        let ring = Keyring::new(Some(KEY_A), None).unwrap();
        assert_ne!(ring.seal("p", "same"), ring.seal("p", "same"));
    }

    #[test]
    fn without_a_key_values_stay_in_clear() {
        let ring = Keyring::clear();
        assert_eq!(ring.seal("p", "whsec_abc"), "whsec_abc");
        assert_eq!(ring.open("p", "whsec_abc").unwrap(), "whsec_abc");
        assert!(!ring.stale("whsec_abc"));
        let sealed = Keyring::new(Some(KEY_A), None).unwrap().seal("p", "v");
        assert!(matches!(ring.open("p", &sealed), Err(VaultError::UnknownKey(_))));
    }

    #[test]
    fn a_rotation_opens_both_and_seals_with_the_new_key() {
        let old = Keyring::new(Some(KEY_A), None).unwrap();
        let under_old = old.seal("p", "v");
        let both = Keyring::new(Some(KEY_B), Some(KEY_A)).unwrap();
        assert_eq!(both.open("p", &under_old).unwrap(), "v");
        assert!(both.stale(&under_old));
        let under_new = both.seal("p", "v");
        assert!(!both.stale(&under_new));
        assert!(both.stale("in clear"));
        assert_eq!(sealed_key_id(&under_new), both.current_id());
    }

    #[test]
    fn a_tampered_value_does_not_open() {
        let ring = Keyring::new(Some(KEY_A), None).unwrap();
        let sealed = ring.seal("p", "value");
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(ring.open("p", &tampered), Err(VaultError::Damaged(_))));
    }

    #[test]
    fn bad_keys_are_refused_naming_the_variable() {
        let e = Keyring::new(Some("c2hvcnQ="), None).unwrap_err().to_string();
        assert!(e.contains(KEY_VAR) && e.contains("5 bytes"), "{e}");
        let e = Keyring::new(Some("!!"), None).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        let e = Keyring::new(None, Some(KEY_A)).unwrap_err().to_string();
        assert!(e.contains(PREVIOUS_KEY_VAR), "{e}");
        let e = Keyring::new(Some(KEY_A), Some(KEY_A)).unwrap_err().to_string();
        assert!(e.contains("same key"), "{e}");
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let ring = Keyring::new(Some(KEY_A), None).unwrap();
        let shown = format!("{ring:?}");
        assert!(
            !shown.contains(KEY_A) && shown.contains(ring.current_id().unwrap()),
            "{shown}"
        );
    }

    #[test]
    fn headers_are_sealed_value_by_value_under_their_names() {
        let ring = Keyring::new(Some(KEY_A), None).unwrap();
        let headers = serde_json::json!({"Authorization": "Bearer t0ken", "x-team": "ops"});
        let sealed = map_headers("ep_1", &headers, |place, v| Ok::<_, VaultError>(ring.seal(place, v))).unwrap();
        assert!(!sealed.to_string().contains("t0ken"));
        assert!(sealed.get("Authorization").is_some());
        let opened = map_headers("ep_1", &sealed, |place, v| ring.open(place, v)).unwrap();
        assert_eq!(opened, headers);
    }
}
