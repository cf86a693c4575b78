//! `blazedb serve FILE --listen ADDR`: sync a database file with other devices directly,
//! without a server (docs/topologies.md), and `blazedb peer-key FILE`: the key its peers must
//! trust.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use blazedb_sync::remote::{PeerSync, node_keys_for};

use crate::commands::{self, Ctx};
use crate::error::Failure;

pub const HELP: &str = "\
Each device has a static key pair, kept encrypted in its file; `blazedb peer-key FILE` prints
its public key. A device accepts a peer only if it was given the peer's key (--trust), and
connects only to a peer whose key it expects (--connect ADDR=KEY). Every device of the group
uses the same --group name.

Runs until interrupted. Writes other programs make to the file are sent within 200 ms.

EXAMPLES:
  blazedb peer-key a.blazedb
  blazedb serve a.blazedb --listen 127.0.0.1:7500 --group notes --trust <B's key>
  blazedb serve b.blazedb --listen 127.0.0.1:7501 --group notes --trust <A's key> \\
      --connect 127.0.0.1:7500=<A's key>";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The database file
    pub db: PathBuf,
    /// Where to listen for peers (port 0: any free port; the address is printed)
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The sync group: the same name on every peer
    #[arg(long, value_name = "NAME")]
    pub group: String,
    /// A peer's public key (hex, from `blazedb peer-key`) to accept; repeat for more
    #[arg(long, value_name = "KEY")]
    pub trust: Vec<String>,
    /// A peer to connect to, as ADDR=KEY; repeat for more
    #[arg(long, value_name = "ADDR=KEY")]
    pub connect: Vec<String>,
}

fn key_from_hex(text: &str) -> Result<Vec<u8>, Failure> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return Err(Failure::msg(format!(
            "{text:?} is not a key: give the hex that `blazedb peer-key` prints"
        )));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| {
                    Failure::msg(format!(
                        "{text:?} is not a key: give the hex that `blazedb peer-key` prints"
                    ))
                })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `blazedb peer-key FILE`.
pub fn key(ctx: &Ctx, db: &std::path::Path) -> Result<(), Failure> {
    let db = commands::open(ctx, db)?;
    let keys = node_keys_for(&db, Default::default()).map_err(|e| Failure::msg(e.to_string()))?;
    println!("{}", hex(keys.public()));
    Ok(())
}

/// `blazedb serve FILE --listen ADDR ...`.
pub fn serve(ctx: &Ctx, args: &ServeArgs) -> Result<(), Failure> {
    let mut connect = Vec::new();
    for peer in &args.connect {
        let (address, key) = peer.split_once('=').ok_or_else(|| {
            Failure::msg(format!(
                "--connect {peer:?}: give ADDR=KEY (127.0.0.1:7500=04ab…)"
            ))
        })?;
        let address: SocketAddr = address
            .parse()
            .map_err(|e| Failure::msg(format!("--connect {peer:?}: {e}")))?;
        connect.push((address, key_from_hex(key)?));
    }
    let trusted = args
        .trust
        .iter()
        .map(|k| key_from_hex(k))
        .collect::<Result<Vec<_>, _>>()?;
    let db = commands::open(ctx, &args.db)?;
    let peers = PeerSync::start(&db, &args.group).map_err(|e| Failure::msg(e.to_string()))?;
    for key in &trusted {
        peers.trust(key);
    }
    for (_, key) in &connect {
        peers.trust(key);
    }
    let bound = peers
        .listen(args.listen)
        .map_err(|e| Failure::msg(e.to_string()))?;
    println!("listening on {bound}");
    println!("key {}", hex(peers.public_key()));
    for (address, key) in &connect {
        peers
            .connect(*address, key)
            .map_err(|e| Failure::msg(e.to_string()))?;
    }
    loop {
        // Other programs may write to the file: their commits do not wake this process's
        // engine, so it looks for new op-log entries at every round.
        let _ = peers.engine().rescan();
        std::thread::sleep(Duration::from_millis(200));
    }
}
