//! The deliverer's failures: a message that can never be handled (poison), and trouble
//! that passes (the database, the HTTP client).

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("undecodable message: {0}")]
    Poison(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A batched write failed (every caller in the batch gets the same error).
    #[error("database: {0}")]
    Batch(std::sync::Arc<sqlx::Error>),
    /// A first attempt whose delivery could not be stored (or whose endpoint could not be
    /// read): the job comes back and is handled again.
    #[error("the first attempt's delivery could not be stored")]
    NotRecorded,
    #[error("building the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("NATS consumer {consumer}: {message}")]
    Consumer { consumer: &'static str, message: String },
}
