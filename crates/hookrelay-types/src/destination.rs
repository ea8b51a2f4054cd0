//! Where an endpoint's deliveries go when it is not an HTTP POST to its `url`: a subject on
//! the customer's own NATS server (`url` is then `nats://host:port`). Stored as the
//! endpoint's `destination` (JSON; null for HTTP).

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// The longest subject accepted.
pub const MAX_SUBJECT_LEN: usize = 255;

/// A destination other than HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Destination {
    /// The envelope published to `subject` with the Standard Webhooks headers as NATS
    /// headers. With `jetstream`, the server's JetStream acknowledgement counts as
    /// delivered; without, a core publish flushed to the server does.
    Nats {
        subject: String,
        #[serde(default)]
        jetstream: bool,
    },
}

/// A subject to publish to: `.`-separated tokens of letters, digits, `_` and `-`, no
/// wildcards, at most [`MAX_SUBJECT_LEN`] characters.
pub fn check_subject(subject: &str) -> Result<(), Invalid> {
    let token_ok = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if subject.len() <= MAX_SUBJECT_LEN && subject.split('.').all(token_ok) {
        Ok(())
    } else {
        Err(Invalid::new(
            "invalid_destination",
            format!(
                "destination.subject `{subject}` must be `.`-separated tokens of letters, digits, `_` or `-` \
                 (no wildcards), at most {MAX_SUBJECT_LEN} characters"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_destination_reads_back_from_its_stored_form() {
        let stored = serde_json::json!({"type": "nats", "subject": "customer.hooks", "jetstream": true});
        let d: Destination = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(
            d,
            Destination::Nats {
                subject: "customer.hooks".into(),
                jetstream: true
            }
        );
        assert_eq!(serde_json::to_value(&d).unwrap(), stored);
    }

    #[test]
    fn only_plain_subjects_are_destinations() {
        for good in ["hooks", "customer.hooks", "a-b.c_d.e1"] {
            assert!(check_subject(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", &"a".repeat(256)] {
            assert_eq!(check_subject(bad).unwrap_err().code, "invalid_destination", "{bad}");
        }
    }
}
