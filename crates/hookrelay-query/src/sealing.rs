//! Sealing what `endpoints` stores in clear (query is the table's writer): at every start
//! with `HOOKRELAY_ENCRYPTION_KEY`, rows written without a key are sealed; `hookrelay
//! reencrypt` moves every row under the current key after a rotation (see
//! `hookrelay_runtime::vault`).
//!
//! Rows are rewritten in batches, each locked for the length of its transaction, so an
//! endpoint updated meanwhile is neither lost nor left in clear. `updated_at` stays as it
//! was: the values mean the same.

use hookrelay_runtime::vault::{self, Keyring};
use serde_json::Value;

use crate::{error::QueryError, store};

const BATCH: i64 = 200;

/// Which rows [`reseal`] rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Values stored in clear (written while no key was set).
    Clear,
    /// Every value not sealed under the current key: in clear, or under the previous key.
    NotCurrent,
}

/// What [`reseal`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Endpoints looked at.
    pub endpoints: u64,
    /// Endpoints with at least one value written again.
    pub rewritten: u64,
}

/// Seals the values `which` selects under the current key. Does nothing without one.
pub async fn reseal(db: &sqlx::PgPool, keys: &Keyring, which: Reseal) -> anyhow::Result<Resealed> {
    let mut done = Resealed::default();
    if !keys.seals() {
        return Ok(done);
    }
    let mut after = String::new();
    loop {
        let mut tx = db.begin().await?;
        let rows = store::sealed_values_for_update(&mut *tx, &after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = last.id.clone();
        for row in rows {
            done.endpoints += 1;
            let Some((secret, previous_secret, headers)) = resealed_row(
                keys,
                which,
                &row.id,
                &row.secret,
                row.previous_secret.as_deref(),
                &row.headers,
            )?
            else {
                continue;
            };
            let values = store::SealedValues {
                id: row.id,
                secret,
                previous_secret,
                headers,
            };
            store::write_sealed_values(&mut *tx, &values).await?;
            done.rewritten += 1;
        }
        tx.commit().await?;
    }
    Ok(done)
}

/// The row's values sealed again, or `None` when none needs it.
fn resealed_row(
    keys: &Keyring,
    which: Reseal,
    id: &str,
    secret: &str,
    previous: Option<&str>,
    headers: &Value,
) -> Result<Option<(String, Option<String>, Value)>, QueryError> {
    let stale = |stored: &str| match which {
        Reseal::Clear => keys.seals() && vault::sealed_key_id(stored).is_none(),
        Reseal::NotCurrent => keys.stale(stored),
    };
    let mut changed = false;
    let mut again = |place: &str, stored: &str| -> Result<String, QueryError> {
        if !stale(stored) {
            return Ok(stored.to_owned());
        }
        changed = true;
        Ok(keys.seal(place, &keys.open(place, stored)?))
    };
    let place = vault::secret_place(id);
    let secret = again(&place, secret)?;
    let previous = previous.map(|p| again(&place, p)).transpose()?;
    let headers = vault::map_headers(id, headers, &mut again)?;
    Ok(changed.then_some((secret, previous, headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn rows_in_clear_are_sealed_and_sealed_ones_left_alone() {
        let keys = Keyring::new(Some(KEY_A), None).unwrap();
        let headers = serde_json::json!({"authorization": "Bearer x"});
        let (secret, previous, sealed_headers) = resealed_row(&keys, Reseal::Clear, "ep_1", "whsec_a", None, &headers)
            .unwrap()
            .unwrap();
        assert!(vault::sealed_key_id(&secret).is_some() && previous.is_none());
        assert!(!sealed_headers.to_string().contains("Bearer x"));
        let again = resealed_row(&keys, Reseal::Clear, "ep_1", &secret, None, &sealed_headers).unwrap();
        assert!(again.is_none());
    }

    #[test]
    fn a_rotation_moves_values_from_the_previous_key() {
        let old = Keyring::new(Some(KEY_A), None).unwrap();
        let place = vault::secret_place("ep_1");
        let under_old = old.seal(&place, "whsec_a");
        let keys = Keyring::new(Some(KEY_B), Some(KEY_A)).unwrap();
        // Starting only seals what is in clear.
        let start = resealed_row(&keys, Reseal::Clear, "ep_1", &under_old, None, &Value::Null).unwrap();
        assert!(start.is_none());
        let (secret, ..) = resealed_row(&keys, Reseal::NotCurrent, "ep_1", &under_old, None, &Value::Null)
            .unwrap()
            .unwrap();
        assert_eq!(vault::sealed_key_id(&secret), keys.current_id());
        assert_eq!(keys.open(&place, &secret).unwrap(), "whsec_a");
    }
}
