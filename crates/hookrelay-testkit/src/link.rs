//! A TCP link to a server that a test can cut and restore, in the manner of a network
//! partition: while cut, no byte crosses in either direction and a new connection gets no
//! further than the link, but connections already made stay open at both ends (nobody
//! hears a close or a reset). What either side writes meanwhile waits in the link and the
//! kernels' buffers, and arrives once the link is back, as TCP's retransmissions deliver
//! it after a short cut.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

pub struct Link {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    stop: CancellationToken,
}

impl Link {
    /// Listens on a free loopback port and forwards each connection to `server`.
    pub async fn start(server: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, _) = watch::channel(true);
        let stop = CancellationToken::new();
        let (opened, stopped) = (open.subscribe(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let (open, stop) = (opened.clone(), stopped.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = carry(client, server, open) => {}
                    }
                });
            }
        });
        Ok(Self { addr, open, stop })
    }

    /// `nats://` URL of the link.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One connection: reaches the server once the link is open, then carries bytes both ways
/// while it is.
async fn carry(client: TcpStream, server: SocketAddr, mut open: watch::Receiver<bool>) {
    if open.wait_for(|o| *o).await.is_err() {
        return;
    }
    let Ok(upstream) = TcpStream::connect(server).await else {
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = upstream.into_split();
    // Either direction ending ends both: the other end hears the close.
    tokio::select! {
        () = pump(client_read, server_write, open.clone()) => {}
        () = pump(server_read, client_write, open) => {}
    }
}

async fn pump(mut from: tcp::OwnedReadHalf, mut to: tcp::OwnedWriteHalf, mut open: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read while open or not (the sender cannot tell), carried only while open.
        if open.wait_for(|o| *o).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
