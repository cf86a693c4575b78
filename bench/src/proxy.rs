//! A counting TCP proxy: listens on a loopback port, connects every accepted connection to
//! the target and copies both ways, adding the bytes to two counters. It sees exactly what
//! crosses the network (everything above TCP: HTTP, WebSocket, Noise, HTTP/2, protobuf...).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes through a proxy so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    /// From the client (a device) to the server.
    pub up: u64,
    /// From the server to the client.
    pub down: u64,
}

impl Bytes {
    pub fn total(self) -> u64 {
        self.up + self.down
    }

    pub fn since(self, before: Bytes) -> Bytes {
        Bytes {
            up: self.up - before.up,
            down: self.down - before.down,
        }
    }
}

pub struct CountingProxy {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// A proxy in front of `target`, running on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle, target: SocketAddr) -> CountingProxy {
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let task = runtime.spawn({
            let (up, down) = (up.clone(), down.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(copy_counting(client_read, server_write, up.clone()));
                    tokio::spawn(copy_counting(server_read, client_write, down.clone()));
                }
            }
        });
        CountingProxy {
            addr,
            up,
            down,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn bytes(&self) -> Bytes {
        Bytes {
            up: self.up.load(Ordering::SeqCst),
            down: self.down.load(Ordering::SeqCst),
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies until either side ends, counting what was written.
async fn copy_counting(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}

/// Waits until the proxies' counters have not moved for `quiet` (the traffic a measurement
/// caused, acknowledgements included, is over); returns their final values.
pub fn settle(proxies: &[&CountingProxy], quiet: std::time::Duration) -> Vec<Bytes> {
    let mut last: Vec<Bytes> = proxies.iter().map(|p| p.bytes()).collect();
    let mut still_since = std::time::Instant::now();
    let deadline = std::time::Instant::now() + crate::support::STALL;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now: Vec<Bytes> = proxies.iter().map(|p| p.bytes()).collect();
        if now != last {
            last = now;
            still_since = std::time::Instant::now();
        } else if still_since.elapsed() >= quiet {
            return last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "traffic never settled"
        );
    }
}
