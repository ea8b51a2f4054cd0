//! The NATS connection and hookrelay's JetStream streams, created idempotently at start.
//!
//! | stream | subjects | retention | read by |
//! | --- | --- | --- | --- |
//! | `HOOKRELAY_INGEST` | `hookrelay.ingest.>` | work queue | ingest |
//! | `HOOKRELAY_EVENTS` | `hookrelay.events.>` | limits, 3 days | router |
//! | `HOOKRELAY_DELIVERIES` | `hookrelay.deliveries.>` | work queue | deliverer |
//! | `HOOKRELAY_COMMANDS` | `hookrelay.commands.>` | work queue | deliverer (`.deliverer.>`), query (`.query.>`) |
//! | `HOOKRELAY_SYSTEM` | `hookrelay.system.>` | work queue | ingest (reserved `hookrelay/` events) |
//! | `HOOKRELAY_DEAD` | `hookrelay.dead.>` | limits, 14 days | operators |
//!
//! The intake stream captures core publishes too, so a producer's plain `PUBLISH` is stored
//! the moment the server takes it.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishAckFuture,
        stream::{self, RetentionPolicy, StorageType},
    },
};
use bytes::Bytes;
use hookrelay_types::subjects;

/// The servers `HOOKRELAY_NATS_URL` names: one URL, or several separated by commas (servers
/// of one cluster: the client connects to one that answers and learns the others from it).
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .map(|url| {
            if url.is_empty() {
                return Err("an entry of the list is empty".to_owned());
            }
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("`{url}` is not a NATS server URL: {e}"))
        })
        .collect()
}

/// How a process proves who it is to NATS: `HOOKRELAY_NATS_USER` with
/// `HOOKRELAY_NATS_PASSWORD`, or a `.creds` file (`HOOKRELAY_NATS_CREDS`); neither for a
/// server without authorization. `deploy/nats/nats.conf` names a user per service.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    None,
    Password {
        user: String,
        password: String,
    },
    File(std::path::PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Password { user, .. } => write!(f, "Password {{ user: {user:?}, password: <set> }}"),
            Self::File(path) => write!(f, "File({path:?})"),
        }
    }
}

impl Credentials {
    pub const USER_VAR: &'static str = "HOOKRELAY_NATS_USER";
    pub const PASSWORD_VAR: &'static str = "HOOKRELAY_NATS_PASSWORD";
    pub const CREDS_VAR: &'static str = "HOOKRELAY_NATS_CREDS";

    pub fn from_source(src: &crate::config::Source) -> anyhow::Result<Self> {
        let set = |key: &str| src.raw(key).map(str::trim).filter(|v| !v.is_empty());
        let user = set(Self::USER_VAR);
        let password = src.raw(Self::PASSWORD_VAR).filter(|v| !v.is_empty());
        match (user, password, set(Self::CREDS_VAR)) {
            (None, None, None) => Ok(Self::None),
            (Some(user), Some(password), None) => Ok(Self::Password {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            (None, None, Some(path)) => Ok(Self::File(path.into())),
            (Some(_), None, None) => anyhow::bail!("{} is set without {}", Self::USER_VAR, Self::PASSWORD_VAR),
            (None, Some(_), None) => anyhow::bail!("{} is set without {}", Self::PASSWORD_VAR, Self::USER_VAR),
            _ => anyhow::bail!(
                "set either {} and {} or {}, not both",
                Self::USER_VAR,
                Self::PASSWORD_VAR,
                Self::CREDS_VAR
            ),
        }
    }

    /// A producer's credentials: user `producer` where `HOOKRELAY_NATS_PRODUCER_PASSWORD`
    /// is set (as it is for the server running `deploy/nats/nats.conf`), else the
    /// process's own. The demo and `hookrelay bench` publish their events with these.
    pub fn producer(src: &crate::config::Source) -> anyhow::Result<Self> {
        match src.raw(PRODUCER_PASSWORD_VAR).filter(|v| !v.is_empty()) {
            Some(password) => Ok(Self::Password {
                user: PRODUCER_USER.to_owned(),
                password: password.to_owned(),
            }),
            None => Self::from_source(src),
        }
    }

    /// The user, as logs name it.
    fn describe(&self) -> String {
        match self {
            Self::None => "no credentials".to_owned(),
            Self::Password { user, .. } => format!("user `{user}`"),
            Self::File(path) => format!("the credentials in {}", path.display()),
        }
    }
}

/// The user `deploy/nats/nats.conf` gives producers, and where its password comes from.
pub const PRODUCER_USER: &str = "producer";
pub const PRODUCER_PASSWORD_VAR: &str = "HOOKRELAY_NATS_PRODUCER_PASSWORD";

/// Counts what NATS servers refused this process: `kind` is `authorization` (the
/// credentials) or `permissions` (a subject its user may not use).
pub const SERVER_ERRORS: &str = "hookrelay_nats_server_errors_total";

/// Connects to the servers `urls` names (see [`server_addrs`]) as `credentials`. Replies
/// come under [`subjects::SERVICE_INBOX`], which producers may not read. What a server
/// refuses (credentials, a subject's permission) is logged as an error and counted
/// ([`SERVER_ERRORS`]).
pub async fn connect(urls: &str, credentials: &Credentials) -> anyhow::Result<async_nats::Client> {
    connect_with_inbox(urls, credentials, subjects::SERVICE_INBOX, true).await
}

/// Like [`connect`], for a producer: replies come under the usual `_INBOX`, the only
/// inbox a producer's user may read; fails at once when no server answers.
pub async fn connect_producer(urls: &str, credentials: &Credentials) -> anyhow::Result<async_nats::Client> {
    connect_with_inbox(urls, credentials, "_INBOX", false).await
}

async fn connect_with_inbox(
    urls: &str,
    credentials: &Credentials,
    inbox: &str,
    retry: bool,
) -> anyhow::Result<async_nats::Client> {
    let servers = server_addrs(urls).map_err(|e| anyhow::anyhow!("HOOKRELAY_NATS_URL: {e}"))?;
    let mut options = match credentials {
        Credentials::None => async_nats::ConnectOptions::new(),
        Credentials::Password { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Credentials::File(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| anyhow::anyhow!("{} {}: {e}", Credentials::CREDS_VAR, path.display()))?,
    };
    let who = credentials.describe();
    options = options.event_callback(move |event| {
        let who = who.clone();
        async move { log_event(&who, &event) }
    });
    if retry {
        options = options.retry_on_initial_connect();
    }
    let client = options
        .name("hookrelay")
        .custom_inbox_prefix(inbox)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(PING_EVERY)
        .connect(servers)
        .await?;
    Ok(client)
}

/// How often a connection asks the server for a PONG. A connection that carries nothing
/// (a network partition: no close, no reset) is given up after two pings go unanswered, so
/// within three of these: it then reconnects, `/readyz` says NATS is disconnected
/// meanwhile, and what was announced while it was away is reloaded (see [`Reconnects`]).
pub const PING_EVERY: Duration = Duration::from_secs(2);

fn log_event(who: &str, event: &async_nats::Event) {
    use async_nats::{Event, ServerError};
    match event {
        Event::ServerError(ServerError::AuthorizationViolation) => {
            metrics::counter!(SERVER_ERRORS, "kind" => "authorization").increment(1);
            tracing::error!(
                "NATS refused {who}: set HOOKRELAY_NATS_USER and HOOKRELAY_NATS_PASSWORD (or HOOKRELAY_NATS_CREDS) to a user the server knows"
            );
        }
        Event::ServerError(ServerError::Other(message))
            if message.to_ascii_lowercase().contains("permissions violation") =>
        {
            metrics::counter!(SERVER_ERRORS, "kind" => "permissions").increment(1);
            tracing::error!(%message, "NATS refused {who} a subject: its permissions (deploy/nats/nats.conf) lack it");
        }
        Event::ServerError(error) => tracing::warn!(%error, "NATS server error"),
        Event::Disconnected => tracing::warn!("disconnected from NATS"),
        Event::Connected => tracing::info!("connected to NATS as {who}"),
        _ => {}
    }
}

fn stream_config(name: &str, subject: &str, retention: RetentionPolicy, max_age: Duration) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        retention,
        storage: StorageType::File,
        max_age,
        duplicate_window: Duration::from_secs(120),
        num_replicas: 1,
        ..Default::default()
    }
}

/// hookrelay's streams, as the table above describes them.
fn streams() -> [stream::Config; 6] {
    let day = Duration::from_secs(86_400);
    [
        stream_config(
            subjects::INGEST_STREAM,
            subjects::INGEST_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::EVENTS_STREAM,
            subjects::EVENTS_SUBJECTS,
            RetentionPolicy::Limits,
            3 * day,
        ),
        stream_config(
            subjects::DELIVERIES_STREAM,
            subjects::DELIVERIES_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::COMMANDS_STREAM,
            subjects::COMMANDS_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::SYSTEM_STREAM,
            subjects::SYSTEM_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::DEAD_STREAM,
            subjects::DEAD_SUBJECTS,
            RetentionPolicy::Limits,
            14 * day,
        ),
    ]
}

/// Creates the streams `names` (hookrelay's, [`subjects::ALL_STREAMS`] or a service's
/// share of them) with `replicas` copies each (`HOOKRELAY_STREAM_REPLICAS`: 3 on a
/// three-server cluster); an existing stream with another count is updated to it.
pub async fn ensure_streams(js: &jetstream::Context, names: &[&str], replicas: usize) -> Result<(), anyhow::Error> {
    for name in names {
        ensure_stream(js, name, replicas).await?;
    }
    Ok(())
}

/// Creates the stream `name` (one of hookrelay's) if it is missing.
pub async fn ensure_stream(js: &jetstream::Context, name: &str, replicas: usize) -> Result<(), anyhow::Error> {
    let config = streams()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| anyhow::anyhow!("{name} is not a hookrelay stream"))?;
    ensure(js, config, replicas).await
}

async fn ensure(js: &jetstream::Context, mut config: stream::Config, replicas: usize) -> Result<(), anyhow::Error> {
    config.num_replicas = replicas;
    let name = config.name.clone();
    let failed = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("stream {name} with {replicas} replicas (HOOKRELAY_STREAM_REPLICAS): {e}")
    };
    let mut stream = js.get_or_create_stream(config.clone()).await.map_err(|e| failed(&e))?;
    let info = stream.info().await.map_err(|e| failed(&e))?;
    if info.config.num_replicas != replicas {
        js.update_stream(config).await.map_err(|e| failed(&e))?;
    }
    Ok(())
}

/// Notices that a client connected again since it last looked, however short the outage:
/// core NATS announcements published meanwhile are lost, so a holder of announced state
/// must reload it. Reads the client's connect count, so no outage goes unseen between two
/// looks.
pub struct Reconnects {
    client: async_nats::Client,
    seen: u64,
}

impl Reconnects {
    pub fn new(client: &async_nats::Client) -> Self {
        let seen = client.statistics().connects.load(std::sync::atomic::Ordering::Acquire);
        Self {
            client: client.clone(),
            seen,
        }
    }

    /// Whether the client has connected (again) since the last call, or since [`Reconnects::new`].
    pub fn happened(&mut self) -> bool {
        let now = self
            .client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Acquire);
        let happened = now != self.seen;
        self.seen = now;
        happened
    }
}

/// Core NATS announcements of a change (an endpoint's, for instance) that a process must
/// apply before the work that follows them. The server writes messages to one connection
/// in the order it handles them, and an announcer flushes before it answers; so an
/// announcement is already here when any message published after that answer (an event's
/// job) arrives on the same connection. Taking every [`Announcements::ready`] one before
/// each piece of work applies every change announced before it. (Across the servers of a
/// cluster the order is not kept.) [`crate::cache::FollowedCache`] is built on this.
pub struct Announcements(async_nats::Subscriber, Reconnects);

impl Announcements {
    /// Subscribes to `subject`; flushed, so nothing announced after this returns is missed.
    pub async fn subscribe(nats: &async_nats::Client, subject: &'static str) -> Result<Self, async_nats::Error> {
        let reconnects = Reconnects::new(nats);
        let subscriber = nats.subscribe(subject).await?;
        nats.flush().await?;
        Ok(Self(subscriber, reconnects))
    }

    /// Whether the connection was lost and made again since the last call: announcements
    /// may have been missed meanwhile, and whatever they keep fresh must be read again.
    pub fn reconnected(&mut self) -> bool {
        self.1.happened()
    }

    /// The next announcement already received, without waiting.
    pub fn ready(&mut self) -> Option<async_nats::Message> {
        use futures::{FutureExt as _, StreamExt as _};
        self.0.next().now_or_never().flatten()
    }
}

/// Publishes with `Nats-Msg-Id` (JetStream drops a repeat within the duplicate window) and
/// the current span's trace context (`traceparent`, see `telemetry`), and returns the ack
/// future: await it before acknowledging whatever caused the publish.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    mut headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAckFuture, jetstream::context::PublishError> {
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    crate::telemetry::inject(&mut headers);
    js.publish_with_headers(subject, headers, payload).await
}

/// A durable pull consumer as hookrelay makes it: enough to make it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    pub name: &'static str,
    /// Needed where several consumers share a work-queue stream (they may not overlap).
    pub filter: Option<&'static str>,
}

impl ConsumerSpec {
    /// What `/readyz` names while the consumer is missing.
    pub fn describe(&self) -> String {
        format!("consumer {} on stream {}", self.name, self.stream)
    }

    /// Whether messages stay in the stream after they are acknowledged (the events
    /// stream): a consumer made anew there must not start at the stream's beginning.
    fn keeps_messages(&self) -> bool {
        self.stream == subjects::EVENTS_STREAM
    }
}

/// Where a consumer's loop gets what it needs to make its consumer (and stream) again.
#[derive(Clone)]
pub struct Source {
    pub js: jetstream::Context,
    pub spec: ConsumerSpec,
    /// `HOOKRELAY_STREAM_REPLICAS`, for a stream made anew.
    pub replicas: usize,
    pub ready: crate::Readiness,
    /// For a consumer on a stream that keeps its messages: its position is written here
    /// (`consumer_positions`), and a consumer made anew after a restart starts from it.
    pub positions: Option<sqlx::PgPool>,
}

/// One message for a consumer loop's handler.
pub struct Handed {
    pub msg: jetstream::Message,
    /// The message may have been handled before: its consumer was made anew (deleted by
    /// hand, or its stream was) and it is at or before the last one handed out before that.
    pub maybe_seen: bool,
}

/// How far a consumer got: the highest stream sequence handed out, and the ack floor its
/// server reported last.
#[derive(Default)]
struct Progress {
    seen: std::sync::atomic::AtomicU64,
    floor: std::sync::atomic::AtomicU64,
    /// The stream `seen` and `floor` count in (its creation time).
    stream_created: std::sync::Mutex<Option<time::OffsetDateTime>>,
}

impl Progress {
    fn position(&self) -> Position {
        Position {
            floor: self.floor.load(std::sync::atomic::Ordering::Acquire),
            stream_created: *self.stream_created.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Counts from now on in the stream made at `created`: a new stream starts afresh.
    fn counting_in(&self, created: time::OffsetDateTime) -> bool {
        let mut current = self.stream_created.lock().unwrap_or_else(|e| e.into_inner());
        let same = *current == Some(created);
        if !same {
            self.seen.store(0, std::sync::atomic::Ordering::Release);
            self.floor.store(0, std::sync::atomic::Ordering::Release);
            *current = Some(created);
        }
        same
    }
}

/// When a stream was made, which tells one stream from another of the same name made
/// after it was deleted. To the microsecond, as PostgreSQL keeps it: a time read back from
/// the database compares equal to the stream's own.
pub fn stream_created(stream: &jetstream::stream::Info) -> time::OffsetDateTime {
    let t = stream.created;
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap_or(t)
}

/// Where a consumer on a stream that keeps its messages got: its ack floor, in the stream
/// made at `stream_created` (unknown for a position written before that was noted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    floor: u64,
    stream_created: Option<time::OffsetDateTime>,
}

impl Position {
    /// The sequence a new consumer starts at on `stream`, or `None` for the stream's start:
    /// a position in another stream of the same name (deleted and made again since) does
    /// not count there. One whose stream is unknown counts unless it lies past the
    /// stream's end.
    fn start_in(&self, stream: &jetstream::stream::Info) -> Option<u64> {
        let same = match self.stream_created {
            Some(created) => created == stream_created(stream),
            None => self.floor <= stream.state.last_sequence,
        };
        same.then_some(self.floor + 1)
    }
}

/// The consumer loop every service uses: fetch, hand each message to `handle` on its own
/// task (at most `concurrency` at once), stop fetching on `shutdown`, then give in-flight
/// handlers `drain` to finish. `handle` settles the message itself (ack, nak or term); a
/// message it never settles is redelivered after the consumer's ack wait, counted from
/// when its handler returned: while a message waits for its turn or its handler runs, the
/// server is told every third of the ack wait that it is still being worked on. A fetch error
/// never ends the loop. While it runs, the consumer's lag is reported (see [`report_lag`]).
///
/// **A lost consumer is made again.** When the server ends the consumer (deleted by hand,
/// or with its stream), the loop says so on `/readyz` (503 naming it), makes the stream if
/// it is missing and the consumer with the same configuration, counts it in
/// `hookrelay_consumers_recreated_total{consumer}`, and goes on. On a work-queue stream the
/// new consumer starts at the first message not yet acknowledged; on the events stream, at
/// the ack floor the server last reported (so at most a few seconds are handed out again,
/// each marked [`Handed::maybe_seen`]), unless the stream itself was made anew: its
/// messages are numbered from 1 again, and the new consumer reads it from its start.
pub async fn consume<F, Fut>(
    source: Source,
    consumer: jetstream::consumer::PullConsumer,
    concurrency: usize,
    drain: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(Handed) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tracker = tokio_util::task::TaskTracker::new();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let progress = std::sync::Arc::new(Progress::default());
    let handle = std::sync::Arc::new(handle);
    let spec = source.spec;
    let mut consumer = consumer;
    if let Ok(stream) = source.js.get_stream(spec.stream).await {
        progress.counting_in(stream_created(stream.cached_info()));
    }
    // Sequences at or below this were handed out by a consumer since lost.
    let mut before_loss = 0u64;
    loop {
        let lag = tokio::spawn(report_lag(consumer.clone(), source.clone(), progress.clone()));
        let ended = run_consumer(
            &consumer,
            concurrency,
            &permits,
            &tracker,
            &progress,
            before_loss,
            &handle,
            &shutdown,
        )
        .await;
        lag.abort();
        let why = match ended {
            Ended::Shutdown => break,
            Ended::Lost(why) => why,
        };
        let missing = spec.describe();
        tracing::error!(consumer = spec.name, stream = spec.stream, %why, "the consumer is gone; making it again");
        source.ready.missing(&missing, true);
        metrics::counter!("hookrelay_consumers_recreated_total", "consumer" => spec.name).increment(1);
        before_loss = before_loss.max(progress.seen.load(std::sync::atomic::Ordering::Acquire));
        let position = spec.keeps_messages().then(|| progress.position());
        let mut wait = Duration::from_millis(100);
        consumer = loop {
            match remake(&source, position).await {
                Ok((consumer, created)) => {
                    if !progress.counting_in(created) {
                        // A new stream: nothing in it was handed out before.
                        before_loss = 0;
                    }
                    break consumer;
                }
                Err(error) => {
                    tracing::warn!(consumer = spec.name, %error, "making the consumer again failed; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            return finish(&tracker, drain, spec.name).await;
                        }
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        source.ready.missing(&missing, false);
        tracing::info!(
            consumer = spec.name,
            stream = spec.stream,
            ?position,
            "consumer made again"
        );
    }
    finish(&tracker, drain, spec.name).await
}

async fn finish(tracker: &tokio_util::task::TaskTracker, drain: Duration, name: &str) -> anyhow::Result<()> {
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(consumer = %name, "messages still in flight at the drain deadline; they will be redelivered");
    }
    Ok(())
}

enum Ended {
    Shutdown,
    /// The server ended the consumer, or it no longer exists.
    Lost(String),
}

#[allow(clippy::too_many_arguments)]
async fn run_consumer<F, Fut>(
    consumer: &jetstream::consumer::PullConsumer,
    concurrency: usize,
    permits: &std::sync::Arc<tokio::sync::Semaphore>,
    tracker: &tokio_util::task::TaskTracker,
    progress: &Progress,
    before_loss: u64,
    handle: &std::sync::Arc<F>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Ended
where
    F: Fn(Handed) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt as _;
    use jetstream::consumer::pull::MessagesErrorKind;

    let name = consumer.cached_info().name.clone();
    let every = still_working_every(consumer.cached_info().config.ack_wait);
    // Pulled no further ahead than the handlers can take: a message pulled but not yet
    // handed out cannot say it is still wanted, and would be redelivered after the ack wait.
    let pulling = consumer
        .stream()
        .max_messages_per_batch(concurrency.clamp(1, 200))
        .heartbeat(Duration::from_secs(15))
        .messages()
        .await;
    let mut messages = match pulling {
        Ok(messages) => messages,
        Err(error) => return Ended::Lost(format!("pulling messages: {error}")),
    };
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            next = messages.next() => match next {
                Some(Ok(msg)) => msg,
                Some(Err(error)) => {
                    if matches!(
                        error.kind(),
                        MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::PushBasedConsumer
                            | MessagesErrorKind::RequestLimitExceeded
                    ) {
                        return Ended::Lost(error.to_string());
                    }
                    tracing::warn!(consumer = %name, %error, "fetch failed");
                    if let Some(why) = gone(consumer).await {
                        return Ended::Lost(why);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                None => return Ended::Lost("the server ended its messages".to_owned()),
            },
        };
        let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        progress.seen.fetch_max(sequence, std::sync::atomic::Ordering::AcqRel);
        let held = Held::of(&msg);
        let permit = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            permit = held.while_working(permits.clone().acquire_owned(), every) => match permit {
                Ok(permit) => permit,
                Err(_) => return Ended::Shutdown,
            },
        };
        let work = handle(Handed {
            msg,
            maybe_seen: sequence != 0 && sequence <= before_loss,
        });
        tracker.spawn(async move {
            held.while_working(work, every).await;
            drop(permit);
        });
    }
}

/// How often a held message tells the server it is still being worked on: three times
/// within the consumer's ack wait.
fn still_working_every(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// A message this loop holds: waiting for a permit, or with its handler. While held, it
/// tells the server every so often that it is still being worked on (a progress
/// acknowledgement, `+WPI`, which restarts the ack wait), so a job that waits for a permit
/// or takes longer than the ack wait is not handed to another replica meanwhile. Once the
/// handler returns (it settled the message, or left it to be redelivered) it says nothing
/// more.
struct Held {
    client: async_nats::Client,
    reply: Option<async_nats::Subject>,
}

impl Held {
    fn of(msg: &jetstream::Message) -> Self {
        Self {
            client: msg.context.client(),
            reply: msg.reply.clone(),
        }
    }

    async fn while_working<T>(&self, work: impl std::future::Future<Output = T>, every: Duration) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(every) => {
                    if let Some(reply) = &self.reply
                        && let Err(error) = self.client.publish(reply.clone(), bytes::Bytes::from_static(b"+WPI")).await
                    {
                        tracing::debug!(%error, "telling the server a message is still worked on failed");
                    }
                }
            }
        }
    }
}

/// Why the consumer no longer exists, if it does not.
async fn gone(consumer: &jetstream::consumer::PullConsumer) -> Option<String> {
    use jetstream::context::ConsumerInfoErrorKind;
    let mut consumer = consumer.clone();
    match consumer.info().await {
        Err(e)
            if matches!(
                e.kind(),
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
            ) =>
        {
            Some(e.to_string())
        }
        _ => None,
    }
}

/// Makes the stream (when missing) and the consumer again; on the events stream starting
/// at `start`.
async fn remake(
    source: &Source,
    position: Option<Position>,
) -> anyhow::Result<(jetstream::consumer::PullConsumer, time::OffsetDateTime)> {
    ensure_stream(&source.js, source.spec.stream, source.replicas).await?;
    make_consumer(&source.js, source.spec, position).await
}

/// How often a consumer's lag is read from the server.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// Every [`LAG_EVERY`], the consumer's lag as gauges labelled `stream` and `consumer`:
/// `hookrelay_consumer_pending_messages` (in the stream, not yet delivered to the consumer)
/// and `hookrelay_consumer_ack_pending_messages` (delivered, not yet acknowledged). Every
/// replica sharing a durable consumer reports the same numbers: aggregate with `max`. Also
/// notes the ack floor (and writes the position, where the stream keeps its messages).
async fn report_lag(
    mut consumer: jetstream::consumer::PullConsumer,
    source: Source,
    progress: std::sync::Arc<Progress>,
) {
    let mut tick = tokio::time::interval(LAG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match consumer.info().await {
            Ok(info) => {
                let labels = [("stream", info.stream_name.clone()), ("consumer", info.name.clone())];
                metrics::gauge!("hookrelay_consumer_pending_messages", &labels).set(info.num_pending as f64);
                metrics::gauge!("hookrelay_consumer_ack_pending_messages", &labels).set(info.num_ack_pending as f64);
                let floor = info.ack_floor.stream_sequence;
                progress.floor.fetch_max(floor, std::sync::atomic::Ordering::AcqRel);
                if let Some(db) = &source.positions {
                    let seen = progress.seen.load(std::sync::atomic::Ordering::Acquire);
                    let created = progress.position().stream_created;
                    if let Err(error) = write_position(db, source.spec, floor, seen, created).await {
                        tracing::warn!(%error, consumer = source.spec.name, "writing the consumer's position failed");
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "reading consumer lag failed"),
        }
    }
}

/// Notes how far a consumer on a stream that keeps its messages got.
async fn write_position(
    db: &sqlx::PgPool,
    spec: ConsumerSpec,
    floor: u64,
    seen: u64,
    stream_created: Option<time::OffsetDateTime>,
) -> Result<(), sqlx::Error> {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    // Positions only grow within one stream; a stream made anew starts them again.
    sqlx::query(
        "INSERT INTO consumer_positions (consumer, stream, ack_floor, seen, stream_created, updated_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (consumer) DO UPDATE SET stream = $2, stream_created = $5, updated_at = now(),
             ack_floor = CASE WHEN consumer_positions.stream_created IS NOT DISTINCT FROM $5
                              THEN GREATEST(consumer_positions.ack_floor, $3) ELSE $3 END,
             seen = CASE WHEN consumer_positions.stream_created IS NOT DISTINCT FROM $5
                         THEN GREATEST(consumer_positions.seen, $4) ELSE $4 END",
    )
    .bind(spec.name)
    .bind(spec.stream)
    .bind(as_i64(floor))
    .bind(as_i64(seen))
    .bind(stream_created)
    .execute(db)
    .await?;
    Ok(())
}

/// The position `write_position` noted last.
async fn read_position(db: &sqlx::PgPool, spec: ConsumerSpec) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(i64, Option<time::OffsetDateTime>)> =
        sqlx::query_as("SELECT ack_floor, stream_created FROM consumer_positions WHERE consumer = $1 AND stream = $2")
            .bind(spec.name)
            .bind(spec.stream)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(floor, stream_created)| Position {
        floor: floor.max(0) as u64,
        stream_created,
    }))
}

/// The consumer `spec` names, made if missing: explicit acks, a 30 s ack wait, up to
/// 10,000 messages in flight. A consumer found with another filter (made by an older
/// release) is updated. Where the stream keeps its messages and `positions` knows where a
/// lost consumer got to, a consumer made here starts after that point.
pub async fn consumer(
    js: &jetstream::Context,
    spec: ConsumerSpec,
    positions: Option<&sqlx::PgPool>,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream {}: {e}", spec.stream))?;
    if let Ok(existing) = stream
        .get_consumer::<jetstream::consumer::pull::Config>(spec.name)
        .await
        && spec
            .filter
            .is_none_or(|f| existing.cached_info().config.filter_subject == f)
    {
        return Ok(existing);
    }
    let position = match (spec.keeps_messages(), positions) {
        (true, Some(db)) => read_position(db, spec).await?,
        _ => None,
    };
    Ok(make_consumer(js, spec, position).await?.0)
}

fn consumer_config(spec: ConsumerSpec, start: Option<u64>) -> jetstream::consumer::pull::Config {
    use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    pull::Config {
        durable_name: Some(spec.name.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
        filter_subject: spec.filter.unwrap_or_default().to_owned(),
        deliver_policy: match start {
            Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            None => DeliverPolicy::All,
        },
        ..Default::default()
    }
}

/// Creates (or updates) the consumer; on a stream that keeps its messages starting at
/// `start`.
/// Makes (or updates) the consumer; on a stream that keeps its messages it starts after
/// `position` when that counts in this stream. Returns it with the stream's creation time.
async fn make_consumer(
    js: &jetstream::Context,
    spec: ConsumerSpec,
    position: Option<Position>,
) -> anyhow::Result<(jetstream::consumer::PullConsumer, time::OffsetDateTime)> {
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream {}: {e}", spec.stream))?;
    let created = stream_created(stream.cached_info());
    let start = position.and_then(|p| p.start_in(stream.cached_info()));
    let config = consumer_config(spec, start);
    let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("consumer {} on {}: {e}", spec.name, spec.stream);
    match stream
        .get_consumer::<jetstream::consumer::pull::Config>(spec.name)
        .await
    {
        // Found with another filter: updated (a deliver policy cannot change, nor need to).
        Ok(existing) => {
            let mut config = config;
            config.deliver_policy = existing.cached_info().config.deliver_policy;
            stream.update_consumer(config).await.map_err(|e| failed(&e))?;
        }
        Err(_) => {
            stream.create_consumer(config).await.map_err(|e| failed(&e))?;
        }
    }
    let consumer = stream
        .get_consumer(spec.name)
        .await
        .map_err(|e| anyhow::anyhow!("consumer {} on {}: {e}", spec.name, spec.stream))?;
    Ok((consumer, created))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_list_of_nats_servers_is_parsed_and_a_bad_entry_is_named() {
        let servers = super::server_addrs("nats://127.0.0.1:4222, nats://10.0.0.2:4223").unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(super::server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        let e = super::server_addrs("nats://127.0.0.1:4222,,nats://b:1").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = super::server_addrs("nats://127.0.0.1:4222,http://[::1").unwrap_err();
        assert!(e.contains("http://[::1"), "{e}");
    }
}
