//! The HTTP server's bounds against real TCP clients: a client trickling its headers or its
//! body, or holding an idle connection, is cut off; connections past the limit are answered
//! `503` at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::{Router, routing::post};
use hookrelay_runtime::{
    http::{AppJson, json},
    server::{self, Limits},
};
use hookrelay_testkit::wait_until;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

struct Server {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(limits: Limits) -> Server {
    let app = Router::new().route(
        "/echo",
        post(|AppJson(v): AppJson<serde_json::Value>| async move { json(axum::http::StatusCode::OK, v) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(server::serve(listener, app, shutdown.clone(), limits));
    Server { addr, shutdown }
}

fn limits(header: u64, body: u64, connections: usize) -> Limits {
    Limits {
        max_connections: connections,
        header_timeout: Duration::from_millis(header),
        body_timeout: Duration::from_millis(body),
    }
}

/// Reads until the server closes the connection (or 10 s pass): what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

fn request(body: &str) -> String {
    format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected() {
    let s = start(limits(500, 5_000, 16)).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = stream.split();
    let trickle = async {
        // One byte every 50 ms: never a whole header, always something new.
        for b in b"POST /echo HTTP/1.1\r\nhost: t\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut got = Vec::new();
    let closed = tokio::select! {
        () = trickle => false,
        // Closed (an end or a reset) before the trickle ended.
        _ = rd.read_to_end(&mut got) => true,
    };
    assert!(
        closed,
        "the server still waits for headers trickled for several seconds"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_timeout() {
    let s = start(limits(500, 5_000, 16)).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(request("{\"a\":1}").as_bytes()).await.unwrap();
    let got = read_to_close(&mut stream)
        .await
        .expect("the idle connection was never closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let s = start(limits(5_000, 500, 16)).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let got = read_to_close(&mut stream).await.expect("no answer to a stalled body");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"code\":\"request_timeout\""), "{got}");
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_with_503_until_one_closes() {
    let s = start(limits(5_000, 5_000, 2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        // A kept-alive connection that has been answered still counts.
        c.write_all(request("{}").as_bytes()).await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    let got = read_to_close(&mut third)
        .await
        .expect("the connection over the limit was not answered");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(
        got.contains("retry-after: 1") && got.contains("too_many_connections"),
        "{got}"
    );

    drop(held.pop());
    wait_until(
        "a freed connection slot to be reused",
        async || {
            let mut c = TcpStream::connect(s.addr).await.map_err(|e| e.to_string())?;
            c.write_all(request("{}").as_bytes()).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 12];
            c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        },
        |got: &Result<String, String>| got.as_deref() == Ok("HTTP/1.1 200"),
    )
    .await
    .unwrap();
}

#[test]
fn limits_come_from_the_environment_and_refuse_zero() {
    use hookrelay_runtime::config::Source;
    let l = Limits::from_source(&Source::from_pairs([
        ("HOOKRELAY_HTTP_MAX_CONNECTIONS", "10"),
        ("HOOKRELAY_HTTP_HEADER_TIMEOUT", "2s"),
    ]))
    .unwrap();
    assert_eq!((l.max_connections, l.header_timeout), (10, Duration::from_secs(2)));
    assert_eq!(l.body_timeout, Limits::default().body_timeout);
    let e = Limits::from_source(&Source::from_pairs([("HOOKRELAY_HTTP_MAX_CONNECTIONS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("HOOKRELAY_HTTP_MAX_CONNECTIONS"), "{e}");
}
