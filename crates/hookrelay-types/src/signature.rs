//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//! with endpoint secrets written `whsec_<base64 key>`.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

use crate::Invalid;

pub const SECRET_PREFIX: &str = "whsec_";
const KEY_BYTES: usize = 24;

/// An endpoint's signing secret. `Debug` never shows the key.
pub struct Secret(SecretBox<Vec<u8>>);

impl Secret {
    pub fn generate() -> Self {
        let mut key = vec![0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self(SecretBox::new(Box::new(key)))
    }

    /// Accepts `whsec_<base64>` (padded or not).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || Invalid::new("invalid_secret", "a secret is `whsec_` followed by a base64 key");
        let b64 = s.strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let key = STANDARD
            .decode(b64)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64.trim_end_matches('=')))
            .map_err(|_| bad())?;
        if key.is_empty() {
            return Err(bad());
        }
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    /// The `whsec_…` text form, for storage and for showing it to its owner.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(self.0.expose_secret()))
    }

    /// One `v1,<signature>` entry.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Whether any `v1` entry of a `webhook-signature` header was made with this secret.
    /// Constant-time per entry.
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected = self.sign(msg_id, timestamp, body);
        header
            .split(' ')
            .any(|entry| constant_time_eq(entry.as_bytes(), expected.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vectors() {
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");

        let s = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            s.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn verification_rejects_tampering_and_accepts_one_good_entry_among_others() {
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#.as_slice(),
        );
        assert!(s.verify(id, ts, body, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
        assert!(!s.verify(id, ts, body, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="));
        assert!(!s.verify(id, ts, body, "v1,"));
        assert!(s.verify(
            id,
            ts,
            body,
            "v2,abc v1,bm90IGl0 v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!s.verify(id, ts + 1, body, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    }

    #[test]
    fn generated_secrets_round_trip_and_never_print() {
        let s = Secret::generate();
        let text = s.expose();
        assert!(text.starts_with("whsec_"));
        let again = Secret::parse(&text).unwrap();
        assert_eq!(again.sign("a", 1, b"x"), s.sign("a", 1, b"x"));
        assert!(!format!("{s:?}").contains(&text[6..]));
        let unpadded = Secret::parse(text.trim_end_matches('=')).unwrap();
        assert_eq!(unpadded.sign("a", 1, b"x"), s.sign("a", 1, b"x"));
    }
}
