//! A TCP proxy for tests that cuts every connection after a random number of bytes and
//! delays traffic, until told to stop misbehaving. Used by the sync and server tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use blazedb_core::{Database, fields};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FaultProxy {
    pub address: SocketAddr,
    pub faulty: Arc<AtomicBool>,
    pub cuts: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Stops cutting and delaying: from now on the proxy passes traffic through.
    pub fn heal(&self) {
        self.faulty.store(false, Ordering::Relaxed);
    }
}

/// Writes `rounds` transactions of 10 bugs into each database, sleeping `pause` between
/// rounds, so that traffic keeps crossing the proxy while it misbehaves.
pub fn write_rounds(dbs: &[&Database], rounds: i64, pause: Duration) {
    for round in 0..rounds {
        for (n, db) in dbs.iter().enumerate() {
            db.transaction(|tx| {
                for i in 0..10 {
                    tx.insert(
                        "bugs",
                        fields! {"device" => n as i64, "round" => round, "i" => i},
                    )?;
                }
                Ok(())
            })
            .unwrap();
        }
        std::thread::sleep(pause);
    }
}

/// Starts a proxy to `target` on `runtime`: while `faulty`, each connection is cut after
/// 0..`max_bytes` bytes (both directions counted) and chunks wait 0..`max_delay_ms`.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    target: SocketAddr,
    seed: u64,
    max_bytes: u64,
    max_delay_ms: u64,
) -> FaultProxy {
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    let faulty = Arc::new(AtomicBool::new(true));
    let cuts = Arc::new(AtomicU64::new(0));
    let (f, c) = (faulty.clone(), cuts.clone());
    runtime.spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let budget = Arc::new(AtomicU64::new(rng.random_range(0..max_bytes)));
            let (f, c) = (f.clone(), c.clone());
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let seed = rng.random::<u64>();
            let cut = Arc::new(tokio::sync::Notify::new());
            for (mut r, mut w, seed) in [
                (
                    Box::new(ri) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    seed,
                ),
                (Box::new(ro), Box::new(wi), seed ^ 1),
            ] {
                let (f, c, budget, cut) = (f.clone(), c.clone(), budget.clone(), cut.clone());
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = tokio::select! {
                            n = r.read(&mut buf) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
                            () = cut.notified() => break,
                        };
                        let mut n = n;
                        if f.load(Ordering::Relaxed) {
                            let left = budget.load(Ordering::Relaxed);
                            if (n as u64) >= left {
                                // Forward part of the chunk, then cut both ways.
                                n = left as usize;
                                let _ = w.write_all(&buf[..n]).await;
                                c.fetch_add(1, Ordering::Relaxed);
                                cut.notify_waiters();
                                break;
                            }
                            budget.fetch_sub(n as u64, Ordering::Relaxed);
                            if max_delay_ms > 0 {
                                let delay = rng.random_range(0..=max_delay_ms);
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = w.shutdown().await;
                    cut.notify_waiters();
                });
            }
        }
    });
    FaultProxy {
        address,
        faulty,
        cuts,
    }
}
