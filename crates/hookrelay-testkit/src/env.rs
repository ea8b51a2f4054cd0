//! A private NATS server and a fresh database for one test.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use hookrelay_runtime::config::Source;
use rand::Rng;
use sqlx::{Connection, Executor, PgConnection};

pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The encryption key every test environment sets (`HOOKRELAY_ENCRYPTION_KEY`): stored
/// secrets are sealed in tests as in production.
pub const ENCRYPTION_KEY: &str = "dGVzdC1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg5YWI=";

/// The users of `deploy/nats/nats.conf`, which every test's NATS server runs: each one's
/// password is `test-<user>-password`.
pub const NATS_USERS: [&str; 7] = [
    "producer",
    "ingest",
    "router",
    "deliverer",
    "query",
    "hookrelay",
    "admin",
];

/// The password a test's NATS server gives `user`.
pub fn nats_password(user: &str) -> String {
    format!("test-{user}-password")
}

/// The NATS server configuration hookrelay ships (`deploy/nats/nats.conf`).
pub fn nats_conf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/nats.conf")
}

/// The server's environment variable holding `user`'s password.
fn nats_password_var(user: &str) -> String {
    format!("HOOKRELAY_NATS_{}_PASSWORD", user.to_ascii_uppercase())
}

pub struct TestEnv {
    pub nats_url: String,
    pub database_url: String,
    nats_port: u16,
    nats_store: tempfile::TempDir,
    nats: Option<Child>,
    admin_url: String,
    db_name: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub(crate) fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("HOOKRELAY_TEST_NATS_SERVER") {
        return p.into();
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    "nats-server".into()
}

impl TestEnv {
    pub async fn start() -> anyhow::Result<Self> {
        let admin_url = std::env::var("HOOKRELAY_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        Self::start_on(admin_url).await
    }

    /// Like [`TestEnv::start`], with the database on the server behind `admin_url` (e.g. a
    /// [`crate::PgCluster`] of the test's own).
    pub async fn start_on(admin_url: String) -> anyhow::Result<Self> {
        hookrelay_runtime::telemetry::install_crypto_provider();
        let db_name = format!("hr_test_{:016x}", rand::rng().random::<u64>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url} (set HOOKRELAY_TEST_DATABASE_URL)"))?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .await?;
        let database_url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db_name}"),
            None => bail!("HOOKRELAY_TEST_DATABASE_URL must end in /<database>"),
        };
        let nats_port = free_port();
        let mut env = Self {
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
            database_url,
            nats_port,
            nats_store: tempfile::tempdir()?,
            nats: None,
            admin_url,
            db_name,
        };
        env.start_nats().await?;
        Ok(env)
    }

    /// Starts (or restarts) the private NATS server on the same port and store, running
    /// `deploy/nats/nats.conf` (its users' passwords: [`nats_password`]).
    pub async fn start_nats(&mut self) -> anyhow::Result<()> {
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(nats_conf())
            .args(["-a", "127.0.0.1", "-p", &self.nats_port.to_string(), "-js", "-sd"])
            .arg(self.nats_store.path())
            .envs(NATS_USERS.map(|user| (nats_password_var(user), nats_password(user))))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (run scripts/install-tools.sh)", bin.display()))?;
        self.nats = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.nats_port));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("nats-server did not listen on {addr}")
    }

    /// Where the private NATS server listens.
    pub fn nats_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nats_port))
    }

    /// Kills the NATS server (SIGKILL): for restart tests.
    pub fn kill_nats(&mut self) {
        if let Some(mut child) = self.nats.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The contract's variables for this environment, plus `extra` (which wins). NATS as
    /// user `hookrelay` (the four services together); see [`TestEnv::source_as`].
    pub fn source(&self, extra: &[(&str, &str)]) -> Source {
        self.source_as("hookrelay", extra)
    }

    /// [`TestEnv::source`] for a service connecting to NATS as `user` (`ingest`, `router`,
    /// `deliverer`, `query`): its suite runs with no more permissions than it ships with.
    pub fn source_as(&self, user: &str, extra: &[(&str, &str)]) -> Source {
        let password = nats_password(user);
        let mut pairs: Vec<(&str, &str)> = vec![
            ("HOOKRELAY_NATS_URL", &self.nats_url),
            ("HOOKRELAY_NATS_USER", user),
            ("HOOKRELAY_NATS_PASSWORD", &password),
            ("HOOKRELAY_DATABASE_URL", &self.database_url),
            ("HOOKRELAY_ADMIN_TOKEN", ADMIN_TOKEN),
            ("HOOKRELAY_ENCRYPTION_KEY", ENCRYPTION_KEY),
            ("HOOKRELAY_RETRY_SCHEDULE", "100ms,200ms,400ms"),
            ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true"),
            ("HOOKRELAY_HTTP_ADDR", "127.0.0.1:0"),
            ("HOOKRELAY_DRAIN_TIMEOUT", "5s"),
            // Test receivers fail many attempts in a row: an endpoint turning `failing` is
            // probed at a pace that must not outlast the tests' waits.
            ("HOOKRELAY_PROBE_INTERVAL", "100ms"),
        ];
        pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        pairs.extend_from_slice(extra);
        Source::from_pairs(pairs)
    }

    /// The whole environment of a child process (the real binary) run after `env_clear()`:
    /// `PATH` and this environment's NATS (as user `hookrelay`), database, admin token and
    /// encryption key.
    pub fn process_env(&self) -> [(&'static str, String); 7] {
        [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOOKRELAY_NATS_URL", self.nats_url.clone()),
            ("HOOKRELAY_NATS_USER", "hookrelay".to_owned()),
            ("HOOKRELAY_NATS_PASSWORD", nats_password("hookrelay")),
            ("HOOKRELAY_DATABASE_URL", self.database_url.clone()),
            ("HOOKRELAY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("HOOKRELAY_ENCRYPTION_KEY", ENCRYPTION_KEY.to_owned()),
        ]
    }

    /// A pool on this test's database (for assertions on stored rows).
    pub async fn db(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.database_url).await?)
    }

    /// A plain NATS client on this test's server, as user `admin` (every permission: an
    /// operator's `nats` CLI).
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        self.nats_as("admin").await
    }

    /// A plain NATS client on this test's server as `user` (see [`NATS_USERS`]).
    pub async fn nats_as(&self, user: &str) -> anyhow::Result<async_nats::Client> {
        Ok(
            async_nats::ConnectOptions::with_user_and_password(user.to_owned(), nats_password(user))
                .connect(&self.nats_url)
                .await?,
        )
    }

    /// Waits until every consumer of every stream on this server has been given every
    /// message and settled it: whatever was sent so far has had its whole effect (a message
    /// held back for a retry keeps this waiting). Panics, naming the consumers still busy,
    /// after [`crate::WAIT`].
    pub async fn wait_settled(&self) {
        use futures::TryStreamExt as _;
        let js = async_nats::jetstream::new(self.nats().await.expect("connecting to NATS"));
        crate::wait_until(
            "every consumer to settle its stream (stream, consumer, not yet given, unsettled)",
            async || {
                let mut busy = Vec::new();
                let names: Vec<String> = js.stream_names().try_collect().await.expect("listing streams");
                for name in names {
                    let stream = js.get_stream(&name).await.expect("reading a stream");
                    let infos: Vec<_> = stream.consumers().try_collect().await.expect("listing consumers");
                    for info in infos {
                        if info.num_pending > 0 || info.num_ack_pending > 0 {
                            busy.push((name.clone(), info.name, info.num_pending, info.num_ack_pending));
                        }
                    }
                }
                busy
            },
            Vec::is_empty,
        )
        .await;
    }

    /// Plays query announcing a change and the work a user sends after its answer: from a
    /// connection of its own, publishes `payload` on `subject`, then a second message, and
    /// returns once that second message has reached `ours` (a service's connection). The
    /// announcement is then already waiting there, as it is for an event sent after query
    /// answered.
    pub async fn announce_before_work(
        &self,
        ours: &async_nats::Client,
        subject: String,
        payload: String,
    ) -> anyhow::Result<()> {
        use futures::StreamExt as _;
        let mut work = ours.subscribe("test.work").await?;
        ours.flush().await?;
        let query = self.nats().await?;
        query.publish(subject, payload.into()).await?;
        query.publish("test.work", "work".into()).await?;
        query.flush().await?;
        work.next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the work message never arrived"))?;
        Ok(())
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill_nats();
        let (url, name) = (self.admin_url.clone(), self.db_name.clone());
        // Drop the database on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&url).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}
