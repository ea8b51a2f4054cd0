//! How the shared types cross the PostgreSQL boundary (feature `sqlx`). Every id and status
//! is stored as `text`; decoding checks it the way `parse` checks input, so a row's id
//! arrives typed and a handler never parses a stored id again. A stored value that does not
//! parse is a decode error naming the column's value, not a silent default.

use sqlx::decode::Decode;
use sqlx::encode::{Encode, IsNull};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef, Postgres};
use sqlx::types::Type;

use crate::{ApiKeyId, DeliveryId, DeliveryStatus, EndpointId, EventId, EventType, TenantId, schemes::Scheme};

/// `text` in and out, checked by the type's `parse` on the way in.
macro_rules! text_column {
    ($($name:ty),* $(,)?) => {$(
        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <str as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &PgTypeInfo) -> bool {
                <&str as PgHasArrayType>::array_compatible(ty)
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl Decode<'_, Postgres> for $name {
            fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
                Ok(<$name>::parse(value.as_str()?)?)
            }
        }
    )*};
}

text_column!(
    TenantId,
    EventId,
    EndpointId,
    DeliveryId,
    ApiKeyId,
    EventType,
    DeliveryStatus,
    Scheme
);
