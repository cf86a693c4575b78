//! The hosted databases a running server has open, each with its sync engine.
//!
//! Every database listed in the meta store is opened at start. One created later (by
//! `blazedb-server admin database create`, possibly in another process) is opened at the
//! first connection that names it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use blazedb_sync::SyncEngine;

use crate::error::ServerError;
use crate::keys::KeyDesk;
use crate::meta::{MetaStore, check_database_name};

/// One hosted database and the engine that syncs it with devices.
pub(crate) struct HostedDatabase {
    pub name: String,
    pub engine: SyncEngine,
    /// The scope keys of its end-to-end collections.
    pub keys: Arc<KeyDesk>,
}

/// The open databases, by name.
pub(crate) struct Hosted {
    meta: Arc<MetaStore>,
    /// `None` once shut down: nothing more is opened.
    open: Mutex<Option<HashMap<String, Arc<HostedDatabase>>>>,
    /// How many are open, readable without the lock (which is held while a database opens).
    count: AtomicUsize,
}

impl Hosted {
    /// Opens every database the meta store lists and starts its engine.
    pub fn open_all(meta: Arc<MetaStore>) -> Result<Hosted, ServerError> {
        let mut open = HashMap::new();
        for name in meta.list_databases()? {
            let hosted = start(&meta, &name)?;
            open.insert(name, Arc::new(hosted));
        }
        Ok(Hosted {
            meta,
            count: AtomicUsize::new(open.len()),
            open: Mutex::new(Some(open)),
        })
    }

    /// The hosted database `name`, opening it if the meta store has it but it is not open
    /// yet. `Ok(None)` for an unknown name, or once the server is shutting down. Blocking
    /// (SQLite): call it from a blocking thread.
    pub fn get(&self, name: &str) -> Result<Option<Arc<HostedDatabase>>, ServerError> {
        if check_database_name(name).is_err() {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(open) = open.as_mut() else {
            return Ok(None);
        };
        if let Some(hosted) = open.get(name) {
            return Ok(Some(hosted.clone()));
        }
        if !self.meta.has_database(name)? {
            return Ok(None);
        }
        let hosted = Arc::new(start(&self.meta, name)?);
        open.insert(name.to_owned(), hosted.clone());
        self.count.store(open.len(), Ordering::Relaxed);
        Ok(Some(hosted))
    }

    /// The databases open now.
    pub fn all(&self) -> Vec<Arc<HostedDatabase>> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.iter().flat_map(|m| m.values().cloned()).collect()
    }

    /// Compacts every open database's op log down to its newest `keep` entries (see
    /// [`SyncEngine::compact_oplog`]). Returns each database's new op-log start. Blocking.
    pub fn compact_all(&self, keep: u64) -> Result<Vec<(String, u64)>, ServerError> {
        self.all()
            .iter()
            .map(|hosted| {
                let start =
                    hosted
                        .engine
                        .compact_oplog(keep)
                        .map_err(|source| ServerError::Engine {
                            name: hosted.name.clone(),
                            source,
                        })?;
                Ok((hosted.name.clone(), start))
            })
            .collect()
    }

    /// How many databases are open.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops every engine (each closes its connections with `Close { GoingAway }` and keeps
    /// its cursors, which are saved with every applied batch). Blocking.
    pub fn shutdown(&self) {
        let open = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.count.store(0, Ordering::Relaxed);
        for hosted in open.into_iter().flat_map(HashMap::into_values) {
            hosted.engine.shutdown();
        }
    }
}

fn start(meta: &Arc<MetaStore>, name: &str) -> Result<HostedDatabase, ServerError> {
    let db = meta.open_database(name)?;
    let engine = SyncEngine::start(db, name).map_err(|source| ServerError::Engine {
        name: name.to_owned(),
        source,
    })?;
    Ok(HostedDatabase {
        name: name.to_owned(),
        engine,
        keys: Arc::new(KeyDesk::open(meta.clone(), name)?),
    })
}
