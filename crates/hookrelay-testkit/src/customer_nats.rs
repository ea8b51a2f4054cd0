//! A NATS server standing in for a customer's own: no users, JetStream on, its own port and
//! store, killed when dropped.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

pub struct CustomerNats {
    child: Child,
    pub addr: SocketAddr,
    _store: tempfile::TempDir,
}

impl CustomerNats {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let store = tempfile::tempdir()?;
        let bin = crate::env::nats_server_binary();
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (run scripts/install-tools.sh)", bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Self {
                    child,
                    addr,
                    _store: store,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the customer's nats-server did not listen on {addr}")
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }
}

impl Drop for CustomerNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
