//! Free loopback ports and waiting until a service really answers.

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::ServiceProcess;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before (so two services of one test run never get the same one).
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Io { what: "bind 127.0.0.1:0".into(), source: e })?;
        let port = listener.local_addr().map_err(|e| Error::Io { what: "local_addr".into(), source: e })?.port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Other("no free port found on 127.0.0.1".into()))
}

/// Polls `probe` until it succeeds, failing early if the process exits and with the log's tail
/// if `timeout` passes. Never a fixed sleep: readiness means a real request succeeded.
pub async fn wait_ready<T, F, Fut>(process: &mut ServiceProcess, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(25);
    loop {
        process.check_alive()?;
        let last_error = match probe().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(Error::NotReady {
                service: process.name().to_owned(),
                waited: start.elapsed(),
                last_error,
                log: process.log_path().to_owned(),
                log_tail: process.log_tail(30),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// A minimal plain-HTTP GET (for etcd's /health); returns status code and body.
pub fn http_get(port: u16, path: &str) -> std::result::Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response: {response:.80}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}
