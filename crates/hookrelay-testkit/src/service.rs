//! Running a service (or `hookrelay all`) in the test's process on a loopback port.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::Api;

/// A service started by [`spawn_service`], ready to take requests.
pub struct Service {
    pub api: Api,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds 127.0.0.1:0, runs `run(listener, shutdown)` on a task and waits (up to
/// [`crate::WAIT`]) for `/readyz` to answer 200; panics if it never does.
pub async fn spawn_service<F, Fut>(run: F) -> Service
where
    F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let api = Api::new(format!("http://{}", listener.local_addr().expect("a bound address")));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, shutdown.clone()));
    api.wait_ready().await;
    Service { api, shutdown, task }
}

impl Api {
    /// Waits (up to [`crate::WAIT`]) for `/readyz` to answer 200; panics, with its last
    /// answer, if it never does.
    pub async fn wait_ready(&self) {
        crate::wait_until(
            &format!("{} to answer /readyz with 200", self.base),
            async || self.call(reqwest::Method::GET, "/readyz", None, None).await,
            |r| r.status == 200,
        )
        .await;
    }
}
