//! The Postgres pool and the schema migrations (`migrations/`, applied at start by every
//! service; sqlx serialises concurrent runs with an advisory lock).

use std::time::Duration;

use sqlx::{PgPool, postgres::PgPoolOptions};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, retrying for up to a minute so a service may start before its database.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let mut delay = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// What is said at start when the server's autovacuum is off (`autovacuum = off` in
/// postgresql.conf; it cannot be set per database).
pub const AUTOVACUUM_OFF: &str = "PostgreSQL's autovacuum is off: hookrelay's tables are then never vacuumed or \
     analyzed, dead rows pile up in the busiest ones (deliveries, unpublished_batches) and plans made while a \
     table was small stay in use; turn it on, or run VACUUM ANALYZE on this database every few minutes";

/// Whether the server runs autovacuum (read once at start; a failed read counts as on).
pub async fn autovacuum_on(pool: &PgPool) -> bool {
    let setting: Result<String, _> = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await;
    setting.map_or(true, |on| on == "on")
}
