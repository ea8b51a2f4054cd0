//! The signature schemes an endpoint may ask for, and the headers each puts on a request.
//!
//! | scheme | key | header |
//! | --- | --- | --- |
//! | `standard-hmac` | `whsec_<base64 key>` | `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` |
//! | `standard-ed25519` | `whsk_<base64 private key>`; receivers hold `whpk_<base64 public key>` | `webhook-signature: v1a,<base64 Ed25519 signature of "{id}.{timestamp}.{body}">` |
//! | `convoy` | the secret's text, as Convoy receivers configure it | `x-convoy-signature: t=<timestamp>,v1=<hex HMAC-SHA256(secret, "{timestamp},{body}")>` |
//! | `github` | the secret's text | `x-hub-signature-256: sha256=<hex HMAC-SHA256(secret, body)>` |
//!
//! The Standard Webhooks headers `webhook-id` and `webhook-timestamp` go with every scheme.
//! During a rotation's grace period the Standard Webhooks schemes and `convoy` carry one
//! signature per valid key (the current one first); `github` has room for one, the current.

use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{Invalid, signature::Secret};

pub const PRIVATE_KEY_PREFIX: &str = "whsk_";
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// How an endpoint's requests are signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    #[default]
    StandardHmac,
    StandardEd25519,
    Convoy,
    Github,
}

impl Scheme {
    pub const ALL: [Self; 4] = [Self::StandardHmac, Self::StandardEd25519, Self::Convoy, Self::Github];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardHmac => "standard-hmac",
            Self::StandardEd25519 => "standard-ed25519",
            Self::Convoy => "convoy",
            Self::Github => "github",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|scheme| scheme.as_str() == s)
            .ok_or_else(|| {
                Invalid::new(
                    "invalid_signature",
                    format!("signature.scheme `{s}` is not one of standard-hmac, standard-ed25519, convoy, github"),
                )
            })
    }

    /// A fresh key for this scheme, in its text form (`whsk_…` or `whsec_…`).
    pub fn generate_key(self) -> String {
        match self {
            Self::StandardEd25519 => Ed25519Key::generate().expose(),
            Self::StandardHmac | Self::Convoy | Self::Github => Secret::generate().expose(),
        }
    }

    /// Checks a key's text form for this scheme.
    pub fn check_key(self, key: &str) -> Result<(), Invalid> {
        match self {
            Self::StandardEd25519 => Ed25519Key::parse(key).map(drop),
            Self::StandardHmac | Self::Convoy | Self::Github => Secret::parse(key).map(drop),
        }
    }

    /// What a receiver verifies with and may be shown: the public key of an Ed25519 key,
    /// `None` for the shared-secret schemes (their secret is shown only where its owner
    /// asks for it).
    pub fn public_key(self, key: &str) -> Result<Option<String>, Invalid> {
        match self {
            Self::StandardEd25519 => Ok(Some(Ed25519Key::parse(key)?.public_key())),
            Self::StandardHmac | Self::Convoy | Self::Github => Ok(None),
        }
    }

    /// The signature headers of one request, made with `keys` (the current key first, then
    /// those within their grace period), for `webhook-id` `msg_id` at `timestamp`.
    pub fn headers(
        self,
        keys: &[&str],
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, Invalid> {
        if keys.is_empty() {
            return Err(no_key());
        }
        let joined = |entries: Vec<String>| entries.join(" ");
        let header = match self {
            Self::StandardHmac => {
                let entries = keys
                    .iter()
                    .map(|key| Ok(Secret::parse(key)?.sign(msg_id, timestamp, body)))
                    .collect::<Result<Vec<_>, Invalid>>()?;
                ("webhook-signature", joined(entries))
            }
            Self::StandardEd25519 => {
                let entries = keys
                    .iter()
                    .map(|key| Ok(Ed25519Key::parse(key)?.sign(msg_id, timestamp, body)))
                    .collect::<Result<Vec<_>, Invalid>>()?;
                ("webhook-signature", joined(entries))
            }
            Self::Convoy => {
                let mut value = format!("t={timestamp}");
                for key in keys {
                    let content = [timestamp.to_string().as_bytes(), b",", body].concat();
                    value.push_str(",v1=");
                    value.push_str(&hex(&hmac_sha256(key.as_bytes(), &content)));
                }
                ("x-convoy-signature", value)
            }
            Self::Github => {
                let key = keys[0];
                (
                    "x-hub-signature-256",
                    format!("sha256={}", hex(&hmac_sha256(key.as_bytes(), body))),
                )
            }
        };
        Ok(vec![header])
    }
}

fn no_key() -> Invalid {
    Invalid::new("invalid_signature", "no signing key")
}

/// A Standard Webhooks asymmetric key: Ed25519. Written `whsk_` + the base64 of the 64-byte
/// private key (seed, then public key, as libsodium keeps it); the 32-byte seed alone is
/// read too. `Debug` never shows it.
pub struct Ed25519Key(SigningKey);

impl Ed25519Key {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || {
            Invalid::new(
                "invalid_signature",
                "an Ed25519 key is `whsk_` followed by the base64 of its 64-byte private key",
            )
        };
        let bytes = STANDARD
            .decode(s.strip_prefix(PRIVATE_KEY_PREFIX).ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let key = match bytes.len() {
            32 => SigningKey::from_bytes(bytes.as_slice().try_into().map_err(|_| bad())?),
            64 => {
                let pair: &[u8; 64] = bytes.as_slice().try_into().map_err(|_| bad())?;
                SigningKey::from_keypair_bytes(pair).map_err(|_| bad())?
            }
            _ => return Err(bad()),
        };
        Ok(Self(key))
    }

    /// The `whsk_…` text form, for storage only.
    pub fn expose(&self) -> String {
        format!("{PRIVATE_KEY_PREFIX}{}", STANDARD.encode(self.0.to_keypair_bytes()))
    }

    /// `whpk_` + the base64 of the 32-byte public key: what receivers verify with.
    pub fn public_key(&self) -> String {
        format!(
            "{PUBLIC_KEY_PREFIX}{}",
            STANDARD.encode(self.0.verifying_key().to_bytes())
        )
    }

    /// One `v1a,<signature>` entry.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let content = [msg_id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body].concat();
        format!("v1a,{}", STANDARD.encode(self.0.sign(&content).to_bytes()))
    }
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ed25519Key(whsk_…)")
    }
}

fn hmac_sha256(key: &[u8], content: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(content);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

    use super::*;

    #[test]
    fn schemes_read_back_from_their_names_and_refuse_others() {
        for scheme in Scheme::ALL {
            assert_eq!(Scheme::parse(scheme.as_str()).unwrap(), scheme);
            assert_eq!(serde_json::to_value(scheme).unwrap(), scheme.as_str());
        }
        assert_eq!(Scheme::parse("rsa").unwrap_err().code, "invalid_signature");
        assert_eq!(Scheme::default(), Scheme::StandardHmac);
    }

    #[test]
    fn an_ed25519_signature_verifies_under_the_public_key_alone() {
        let key = Scheme::StandardEd25519.generate_key();
        assert!(key.starts_with("whsk_"));
        let public = Scheme::StandardEd25519.public_key(&key).unwrap().unwrap();
        assert!(public.starts_with("whpk_") && !public.contains(&key[5..]));

        let headers = Scheme::StandardEd25519
            .headers(&[&key], "evt_1", 1_700_000_000, b"{}")
            .unwrap();
        let [(name, value)] = headers.as_slice() else {
            panic!("{headers:?}")
        };
        assert_eq!(*name, "webhook-signature");
        let signature = value.strip_prefix("v1a,").unwrap();

        let public: [u8; 32] = STANDARD.decode(&public[5..]).unwrap().try_into().unwrap();
        let verifying = VerifyingKey::from_bytes(&public).unwrap();
        let signature: [u8; 64] = STANDARD.decode(signature).unwrap().try_into().unwrap();
        let signature = Signature::from_bytes(&signature);
        assert!(verifying.verify(b"evt_1.1700000000.{}", &signature).is_ok());
        assert!(verifying.verify(b"evt_1.1700000001.{}", &signature).is_err());
    }

    #[test]
    fn an_ed25519_key_reads_back_from_its_text_and_from_its_seed() {
        let key = Ed25519Key::generate();
        let again = Ed25519Key::parse(&key.expose()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let seed = STANDARD.encode(&STANDARD.decode(&key.expose()[5..]).unwrap()[..32]);
        assert_eq!(
            Ed25519Key::parse(&format!("whsk_{seed}")).unwrap().public_key(),
            key.public_key()
        );
        assert!(!format!("{key:?}").contains(&key.expose()[5..]));
        for bad in ["whsec_AAAA", "whsk_not base64", "whsk_AAAA"] {
            assert_eq!(Ed25519Key::parse(bad).unwrap_err().code, "invalid_signature", "{bad}");
        }
    }

    #[test]
    fn a_rotation_sends_one_standard_signature_per_key() {
        let (new, old) = (
            Scheme::StandardEd25519.generate_key(),
            Scheme::StandardEd25519.generate_key(),
        );
        let headers = Scheme::StandardEd25519
            .headers(&[&new, &old], "evt_1", 10, b"{}")
            .unwrap();
        assert_eq!(headers[0].1.split(' ').count(), 2);
        let (new, old) = (Secret::generate(), Secret::generate());
        let headers = Scheme::StandardHmac
            .headers(&[&new.expose(), &old.expose()], "evt_1", 10, b"{}")
            .unwrap();
        assert!(new.verify("evt_1", 10, b"{}", &headers[0].1) && old.verify("evt_1", 10, b"{}", &headers[0].1));
    }

    /// GitHub's published example: secret "It's a Secret to Everybody", payload "Hello, World!".
    #[test]
    fn github_signatures_match_githubs_example() {
        let headers = Scheme::Github
            .headers(&["It's a Secret to Everybody"], "evt_1", 10, b"Hello, World!")
            .unwrap();
        assert_eq!(
            headers,
            [(
                "x-hub-signature-256",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned()
            )]
        );
    }

    #[test]
    fn convoy_signatures_cover_the_timestamp_and_the_body() {
        let headers = Scheme::Convoy
            .headers(&["secret", "older"], "evt_1", 1_700_000_000, b"{}")
            .unwrap();
        let [(name, value)] = headers.as_slice() else {
            panic!("{headers:?}")
        };
        assert_eq!(*name, "x-convoy-signature");
        let expected = hex(&hmac_sha256(b"secret", b"1700000000,{}"));
        let older = hex(&hmac_sha256(b"older", b"1700000000,{}"));
        assert_eq!(*value, format!("t=1700000000,v1={expected},v1={older}"));
    }

    #[test]
    fn signing_without_a_key_or_with_a_bad_one_is_refused() {
        assert!(Scheme::StandardHmac.headers(&[], "evt_1", 1, b"{}").is_err());
        assert!(Scheme::StandardHmac.headers(&["whsk_AAAA"], "evt_1", 1, b"{}").is_err());
        assert!(
            Scheme::StandardEd25519
                .headers(&["whsec_AAAA"], "evt_1", 1, b"{}")
                .is_err()
        );
        assert!(
            Scheme::StandardEd25519
                .check_key(&Scheme::StandardHmac.generate_key())
                .is_err()
        );
        assert!(Scheme::Github.check_key(&Scheme::Github.generate_key()).is_ok());
    }
}
