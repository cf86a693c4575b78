//! One sync connection after the WebSocket upgrade: the Noise handshake, the device check
//! (or its enrollment with a one-time token), then the hosted database's sync engine takes
//! the connection over until it ends.
//!
//! The device is looked up in the meta store on every connection, so an administrator's
//! changes (a revoked device, a new enrollment) apply to the next connection; a device
//! revoked while connected is disconnected within a few seconds (see [`watch_revocations`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use blazedb_access::{CollectionMode, ReadScope, WriteScope};
use blazedb_core::PurgeReason;
use blazedb_protocol::{CloseCode, CollectionInfo, Message};
use blazedb_sync::remote::{RelayOptions, Session, Transport, accept_handshake_with};
use blazedb_sync::{ConnectOptions, PeerTrust};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;

use crate::error::MetaError;
use crate::gate::{Gate, Ticket};
use crate::hosted::HostedDatabase;
use crate::keys::{DeviceDesk, KeyDesk};
use crate::log;
use crate::meta::MetaStore;

/// How long a connection may take to end after the server told it to.
const CLOSE_GRACE: Duration = Duration::from_secs(6);
/// How often the meta store is checked for devices revoked while connected.
pub(crate) const REVOCATION_CHECK: Duration = Duration::from_secs(1);

/// The static keys of revoked devices, as last read from the meta store.
pub(crate) type Revoked = Arc<HashSet<Vec<u8>>>;

/// What every connection needs from the server.
pub(crate) struct SessionContext {
    pub meta: Arc<MetaStore>,
    pub send_queue: usize,
    /// Updated by [`watch_revocations`].
    pub revoked: watch::Receiver<Revoked>,
    /// The meta store's version, updated by [`watch_revocations`]: a change may be new
    /// access rules, or a user's new teams or role.
    pub meta_version: watch::Receiver<u64>,
    /// The budget of connections that have not authenticated (and failures per source).
    pub gate: Arc<Gate>,
    /// One permit per authenticated connection, `max_connections` in all.
    pub permits: Arc<Semaphore>,
    pub max_connections: usize,
}

/// Keeps `revoked` and `meta_version` up to date until `shutdown`: after every commit of
/// this process's meta store and at least every [`REVOCATION_CHECK`], one cheap read of the
/// store's version, and the list of revoked keys only when it changed (an `admin device
/// revoke` in another process changes it).
pub(crate) async fn watch_revocations(
    meta: Arc<MetaStore>,
    revoked: watch::Sender<Revoked>,
    meta_version: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A change made through this process's store (the library API, a test) is seen at once;
    // one made by another process (`blazedb-server admin ...`) within REVOCATION_CHECK.
    let committed = Arc::new(tokio::sync::Notify::new());
    let _listener = {
        let committed = committed.clone();
        meta.database().on_commit(move |_| committed.notify_one())
    };
    let mut seen = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(REVOCATION_CHECK) => {}
            () = committed.notified() => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        let meta = meta.clone();
        let last = seen;
        let read = tokio::task::spawn_blocking(move || {
            let version = meta.version()?;
            if Some(version) == last {
                return Ok((version, None));
            }
            Ok::<_, crate::error::MetaError>((version, Some(meta.revoked_keys()?)))
        })
        .await;
        match read {
            Ok(Ok((version, keys))) => {
                seen = Some(version);
                meta_version.send_if_modified(|current| {
                    let changed = *current != version;
                    *current = version;
                    changed
                });
                if let Some(keys) = keys {
                    revoked.send_if_modified(|current| {
                        let changed = **current != keys;
                        if changed {
                            *current = Arc::new(keys);
                        }
                        changed
                    });
                }
            }
            Ok(Err(e)) => log::error(format_args!("reading revoked devices failed: {e}")),
            Err(_) => {}
        }
    }
}

/// What the device is, once its first message is read.
enum Admission {
    /// An enrolled device of `user`; `first` is a message the engine must still see.
    Known {
        user: String,
        first: Option<Message>,
    },
    /// Refused, with the reason the device is told, and what the log says about it (one
    /// line per source and minute; the rest goes into the gate's summary).
    Refused(CloseCode, String, Option<String>),
}

/// Runs one connection to its end. `ticket` is its place among the connections that have
/// not authenticated: the device must be admitted (handshake, enrollment or key check, its
/// node id) before the ticket's deadline; then the ticket is given back and the connection
/// takes one of the `max_connections` slots until it ends.
pub(crate) async fn run<S: Transport>(
    ws: WebSocketStream<S>,
    context: Arc<SessionContext>,
    database: Arc<HostedDatabase>,
    mut shutdown: watch::Receiver<bool>,
    ticket: Ticket,
) {
    let deadline = ticket.deadline();
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    // The initiator names its suite in the first handshake message; the server answers
    // with its key of that suite.
    let keys = |suite| context.meta.server_keys_for(suite);
    let handshake = accept_handshake_with(ws, keys, &database.name, left());
    let session = tokio::select! {
        accepted = handshake => match accepted {
            Ok(session) => session,
            // The device gets the reason in the close frame.
            Err(e) => {
                if !matches!(e, blazedb_sync::remote::RemoteError::Timeout(..)) {
                    ticket.failed();
                }
                return;
            }
        },
        () = crate::stopped(&mut shutdown) => return,
    };
    let fingerprint = session.peer_fingerprint();

    // The device speaks first: `Enroll` when it is new, its `Hello` otherwise.
    let Some((first, returned)) = next_before(
        session,
        deadline,
        &mut shutdown,
        "no message arrived in time after the handshake",
    )
    .await
    else {
        return;
    };
    let mut session = returned;

    let meta = context.meta.clone();
    let key = session.peer_key().to_vec();
    let suite = session.suite();
    let name = database.name.clone();
    let lookup_key = key.clone();
    let admission =
        tokio::task::spawn_blocking(move || admit(&meta, &lookup_key, suite, first, &name))
            .await
            .unwrap_or_else(|_| {
                Admission::Refused(
                    CloseCode::InternalError,
                    "the server failed while checking the device".to_owned(),
                    None,
                )
            });
    let (user, first) = match admission {
        Admission::Known { user, first } => (user, first),
        Admission::Refused(code, reason, line) => {
            if matches!(code, CloseCode::Unauthorized | CloseCode::Revoked) {
                if ticket.failed()
                    && let Some(line) = line
                {
                    log::info(format_args!("{line}"));
                }
            } else if let Some(line) = line {
                log::error(format_args!("{line}"));
            }
            session.refuse(code, &reason).await;
            return;
        }
    };

    // The device's `Hello` names the node it syncs as: bound to its key the first time,
    // checked every time after, before the engine sees anything of the device.
    let hello = match first {
        Some(message) => message,
        None => {
            let Some((message, returned)) =
                next_before(session, deadline, &mut shutdown, "no Hello arrived in time").await
            else {
                return;
            };
            session = returned;
            message
        }
    };
    let Message::Hello { node, .. } = &hello else {
        session
            .refuse(
                CloseCode::ProtocolError,
                "a device's first message (after its enrollment) must be Hello",
            )
            .await;
        return;
    };
    let node = *node;
    let meta = context.meta.clone();
    let bind_key = key.clone();
    let bound = tokio::task::spawn_blocking(move || meta.bind_node(&bind_key, node)).await;
    let refusal = match bound {
        Ok(Ok(())) => None,
        Ok(Err(e @ (MetaError::Storage(_) | MetaError::Corrupt(_)))) => {
            log::error(format_args!(
                "binding device {fingerprint} to its node failed: {e}"
            ));
            Some((
                CloseCode::InternalError,
                "the server failed to check the device's node id".to_owned(),
            ))
        }
        Ok(Err(e)) => {
            if ticket.failed() {
                log::warn(format_args!(
                    "refused device {fingerprint} ({user}) for database {:?}: {e}",
                    database.name
                ));
            }
            Some((CloseCode::Unauthorized, e.to_string()))
        }
        Err(_) => Some((
            CloseCode::InternalError,
            "the server failed while checking the device".to_owned(),
        )),
    };
    if let Some((code, reason)) = refusal {
        session.refuse(code, &reason).await;
        return;
    }

    // Authenticated: out of the strangers' budget, into the enrolled devices' own.
    drop(ticket);
    let Ok(_permit) = context.permits.clone().try_acquire_owned() else {
        session
            .refuse(
                CloseCode::GoingAway,
                &format!(
                    "the server is at its limit of {} connections; try again later",
                    context.max_connections
                ),
            )
            .await;
        return;
    };

    // What the device may read: decided here, from the server's store, never from what the
    // device says.
    let mut version = context.meta_version.clone();
    version.borrow_and_update();
    // And how each collection travels, told before anything else the device's engine hears:
    // its end-to-end layer seals what it sends of the sealed ones from the first operation.
    let rules = async {
        let access = device_access(&context.meta, &database.name, &user, &fingerprint).await?;
        Ok::<_, String>((access, collections_of(&context.meta, &database.name).await?))
    };
    let (access, collections) = match rules.await {
        Ok(read) => read,
        Err(reason) => {
            log::error(format_args!("{reason}"));
            session
                .refuse(
                    CloseCode::InternalError,
                    "the server failed to read the access rules",
                )
                .await;
            return;
        }
    };
    if !collections.is_empty()
        && session
            .send(&Message::Collections {
                collections: collections.clone(),
            })
            .await
            .is_err()
    {
        return;
    }
    // Then the keys wrapped to it, so that it opens what follows.
    let sealed = collections.iter().any(|c| c.sealed);
    let desk = database.keys.clone();
    if sealed
        && let Some(keys) = desk.keys_for(&key)
        && session.send(&keys).await.is_err()
    {
        return;
    }
    let access = access.map(|a| checked_keys(a, &desk));

    let mut relay = session.into_relay(
        Some(hello),
        RelayOptions {
            queue_limit: context.send_queue,
            ..RelayOptions::default()
        },
    );
    if sealed {
        relay = relay.with_layer(Arc::new(DeviceDesk {
            desk: desk.clone(),
            device: key.clone(),
        }));
    }
    let desk_token = sealed.then(|| desk.attach(&key, relay.injector()));
    let mut finished = relay.finished();
    let mut options = ConnectOptions::new(database.name.clone())
        .name(format!("device {fingerprint} ({user})"))
        // A device link carries the device's own operations, nothing else.
        .trust(PeerTrust::Origin(node));
    options.scope = access.as_ref().map(|(read, _)| read.clone());
    options.write_scope = access.as_ref().map(|(_, write)| write.clone());
    let mut access = access;
    let mut revoked = context.revoked.clone();
    let id = match database.engine.connect(relay, options) {
        Ok(id) => id,
        Err(e) => {
            // The engine stopped (the server is shutting down); dropping the relay closes the
            // connection.
            log::warn(format_args!(
                "database {:?}: cannot sync with device {fingerprint}: {e}",
                database.name
            ));
            return;
        }
    };
    if sealed {
        plan_keys(&desk, None).await;
    }
    let told_to_stop = loop {
        tokio::select! {
            () = crate::stopped(&mut finished) => break false,
            () = crate::stopped(&mut shutdown) => break true,
            changed = version.changed() => {
                if changed.is_err() {
                    crate::stopped(&mut finished).await;
                    break false;
                }
                let store_version = *version.borrow_and_update();
                // A collection's mode changed: the device learns it when it reconnects
                // (modes change only on collections the server holds nothing of).
                match collections_of(&context.meta, &database.name).await {
                    Ok(now) if now != collections => {
                        let _ = database.engine.disconnect_with(
                            id,
                            CloseCode::GoingAway,
                            "the collections' modes changed; reconnect to learn them".to_owned(),
                        );
                        break false;
                    }
                    Ok(_) => {}
                    Err(reason) => log::error(format_args!("{reason}")),
                }
                // New rules, or the user's teams or role changed: the device gets the
                // difference at once, on this connection.
                if sealed {
                    // A device may have lost access: its scopes' keys rotate. Every session
                    // of the database sees the change; the first to see it plans.
                    plan_keys(&desk, Some(store_version)).await;
                }
                match device_access(&context.meta, &database.name, &user, &fingerprint)
                    .await
                    .map(|new| new.map(|a| checked_keys(a, &desk)))
                {
                    Ok(new) if new != access => {
                        access = new.clone();
                        let engine = database.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            let (read, write) = new.unzip();
                            // Writes first: nothing the device may no longer write is
                            // accepted while it learns what it may read.
                            engine.engine.set_write_scope(id, write)?;
                            engine.engine.set_scope(id, read, PurgeReason::AccessChanged)
                        })
                        .await;
                    }
                    Ok(_) => {}
                    Err(reason) => log::error(format_args!("{reason}")),
                }
            }
            changed = revoked.changed() => {
                if changed.is_err() {
                    // The watcher is gone (shutting down); only `finished` matters now.
                    crate::stopped(&mut finished).await;
                    break false;
                }
                let is_revoked = revoked.borrow_and_update().contains(&key);
                if is_revoked {
                    log::info(format_args!(
                        "disconnecting device {fingerprint} ({user}): it was revoked"
                    ));
                    let _ = database.engine.disconnect_with(
                        id,
                        CloseCode::Revoked,
                        format!(
                            "device key {fingerprint} was revoked by the server's administrator"
                        ),
                    );
                    break true;
                }
            }
        }
    };
    if let Some(token) = desk_token {
        desk.detach(&key, token);
    }
    if told_to_stop {
        // The engine's shutdown closes the connection (Close { GoingAway }); give it the
        // time to do so before the slot is given back.
        let _ = tokio::time::timeout(CLOSE_GRACE, crate::stopped(&mut finished)).await;
    }
    // The engine keeps an ended connection (for its status) until told to forget it; a
    // server whose devices come and go must tell it, or the engine grows without bound.
    // `disconnect` waits for the engine thread, so not on a runtime worker.
    let engine = database.clone();
    let _ = tokio::task::spawn_blocking(move || {
        // A device the engine closed for breaking the rules (a forged origin, a message out
        // of place) or for being a copy of another device's database is logged; ordinary
        // disconnections are not.
        if let Ok(Some(status)) = engine.engine.connection_status(id)
            && matches!(
                status.close_code,
                Some(
                    CloseCode::ProtocolError | CloseCode::Unauthorized | CloseCode::CopiedDatabase
                )
            )
        {
            log::warn(format_args!(
                "closed device {fingerprint} ({user}) on database {:?}: {}",
                engine.name,
                status.closed_reason.as_deref().unwrap_or("no reason")
            ));
        }
        engine.engine.disconnect(id)
    })
    .await;
}

/// What device `fingerprint` of `user` may read and write of `database` (see
/// [`MetaStore::device_access`]), or the reason the server cannot tell.
async fn device_access(
    meta: &Arc<MetaStore>,
    database: &str,
    user: &str,
    fingerprint: &str,
) -> Result<Option<(ReadScope, WriteScope)>, String> {
    let (meta, database, user, fingerprint) = (
        meta.clone(),
        database.to_owned(),
        user.to_owned(),
        fingerprint.to_owned(),
    );
    let context =
        format!("reading what device {fingerprint} ({user}) may read and write of {database:?}");
    tokio::task::spawn_blocking(move || meta.device_access(&database, &user, &fingerprint))
        .await
        .map_err(|_| format!("{context} failed"))?
        .map_err(|e| format!("{context} failed: {e}"))
}

/// A device's access with its writes checked against the database's current keys.
fn checked_keys(
    (read, write): (ReadScope, WriteScope),
    desk: &Arc<KeyDesk>,
) -> (ReadScope, WriteScope) {
    let check: Arc<dyn blazedb_access::KeyCheck> = desk.clone();
    (read, write.with_key_check(check))
}

/// Hands out the work the keys need ([`KeyDesk::plan`]), off the runtime's workers: it
/// reads the server's store. With `store_version`, only once per version of the store.
async fn plan_keys(desk: &Arc<KeyDesk>, store_version: Option<u64>) {
    if store_version.is_some_and(|v| !desk.first_to_see(v)) {
        return;
    }
    let desk = desk.clone();
    let planned = tokio::task::spawn_blocking(move || desk.plan()).await;
    if let Ok(Err(reason)) = planned {
        log::error(format_args!("handing out end-to-end keys failed: {reason}"));
    }
}

/// How the declared collections of `database` travel, as [`Message::Collections`] tells a
/// device (empty without rules or declarations).
async fn collections_of(
    meta: &Arc<MetaStore>,
    database: &str,
) -> Result<Vec<CollectionInfo>, String> {
    let (meta, name) = (meta.clone(), database.to_owned());
    let rules = tokio::task::spawn_blocking(move || meta.current_access_rules(&name))
        .await
        .map_err(|_| format!("reading the access rules of {database:?} failed"))?
        .map_err(|e| format!("reading the access rules of {database:?} failed: {e}"))?;
    Ok(rules.map_or_else(Vec::new, |rules| {
        rules
            .collection_settings()
            .map(|(name, settings)| CollectionInfo {
                name: name.to_owned(),
                sealed: settings.mode() == CollectionMode::E2e,
                routing_fields: settings.routing_fields().map(str::to_owned).collect(),
            })
            .collect()
    }))
}

/// The device's next message before `deadline` (its time to authenticate), with the session
/// back. `None` once the connection is over: the device closed, or sent something that does
/// not open or decode (it is told so), or it was refused here (shutting down, or nothing in
/// time: `late`).
async fn next_before<S: Transport>(
    mut session: Session<S>,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
    late: &str,
) -> Option<(Message, Session<S>)> {
    let next = tokio::select! {
        next = tokio::time::timeout_at(deadline, session.recv()) => next,
        () = crate::stopped(shutdown) => {
            session.refuse(CloseCode::GoingAway, "the server is shutting down").await;
            return None;
        }
    };
    match next {
        Ok(Ok(message)) => Some((message, session)),
        Ok(Err(e)) => {
            session.end_after(&e).await;
            None
        }
        Err(_) => {
            session.refuse(CloseCode::ProtocolError, late).await;
            None
        }
    }
}

/// Decides whether the device with static key `key` may sync `database` (blocking: reads
/// and maybe writes the meta store).
fn admit(
    meta: &MetaStore,
    key: &[u8],
    suite: blazedb_protocol::secure::Suite,
    first: Message,
    database: &str,
) -> Admission {
    let fingerprint = blazedb_protocol::secure::fingerprint(key);
    let device = match meta.device(key) {
        Ok(device) => device,
        Err(e) => {
            return Admission::Refused(
                CloseCode::InternalError,
                "the server failed to look the device up".to_owned(),
                Some(format!("looking up device {fingerprint} failed: {e}")),
            );
        }
    };
    match device {
        Some(device) if device.revoked => Admission::Refused(
            CloseCode::Revoked,
            format!("device key {fingerprint} was revoked by the server's administrator"),
            Some(format!(
                "refused revoked device {fingerprint} ({}) for database {database:?}",
                device.user
            )),
        ),
        Some(device) => Admission::Known {
            user: device.user,
            // A device that enrolled but did not hear back may send its token again.
            first: match first {
                Message::Enroll { .. } => None,
                other => Some(other),
            },
        },
        None => match first {
            Message::Enroll { token } => match meta.enroll_device(&token, key, suite) {
                Ok(user) => {
                    log::info(format_args!(
                        "enrolled device {fingerprint} for user {:?} (database {database:?})",
                        user.name
                    ));
                    Admission::Known {
                        user: user.name,
                        first: None,
                    }
                }
                Err(e) => {
                    let code = match e {
                        MetaError::Storage(_) => CloseCode::InternalError,
                        _ => CloseCode::Unauthorized,
                    };
                    Admission::Refused(
                        code,
                        format!("enrollment refused: {e}"),
                        Some(format!("refused enrollment of device {fingerprint}: {e}")),
                    )
                }
            },
            _ => Admission::Refused(
                CloseCode::Unauthorized,
                format!(
                    "device key {fingerprint} is not enrolled; enroll it with a token from \
                     `blazedb-server admin token create`"
                ),
                Some(format!(
                    "refused unknown device {fingerprint} for database {database:?}"
                )),
            ),
        },
    }
}
