//! Snapshots on a session: sending the database's records in parts instead of an op log
//! that was compacted past the peer's cursor, and joining the parts a peer sends
//! (docs/protocol.md, "Snapshots").

use std::time::Instant;

use blazedb_core::{SnapshotKey, VersionVector};
use blazedb_format::SnapshotRecord;
use blazedb_protocol::{CloseCode, Message};

use super::{PeerTrust, SNAPSHOT_PART_BYTES, SNAPSHOT_PART_RECORDS, Session, SessionLog, WINDOW};

/// A snapshot being sent on one connection (it replaces `Ops` until its last part).
pub(crate) struct SnapshotOut {
    /// Our op-log head when it started: where `Ops` continue after it.
    pub(crate) position: u64,
    vector: VersionVector,
    pub(crate) total: u64,
    pub(crate) records_sent: u64,
    /// Where the next part continues; `None` before the first part.
    after: Option<SnapshotKey>,
    parts_sent: u32,
    parts_acked: u32,
}

impl SnapshotOut {
    /// The peer acknowledged parts up to `part` (never more than were sent).
    pub(super) fn acked(&mut self, part: u32) {
        self.parts_acked = self.parts_acked.max(part.min(self.parts_sent));
    }
}

/// A snapshot being received on one connection.
pub(crate) struct SnapshotIn {
    position: u64,
    pub(crate) total: u64,
    pub(crate) records: u64,
    next_part: u32,
}

impl Session {
    /// Sends the next part of the snapshot this connection gets, starting one if needed.
    /// Returns whether a part went out (`false`: the window is full).
    pub(super) fn pump_snapshot(
        &mut self,
        log: &mut impl SessionLog,
        now: Instant,
    ) -> blazedb_core::Result<bool> {
        let Some(out) = self.outbound.as_ref() else {
            return Ok(false);
        };
        let (started, after) = match &out.snapshot {
            Some(s) if s.parts_sent.saturating_sub(s.parts_acked) as usize >= WINDOW => {
                return Ok(false);
            }
            Some(s) => (None, s.after.clone()),
            None => (Some(log.snapshot_info()?), None),
        };
        let (records, next) =
            log.snapshot_page(after.as_ref(), SNAPSHOT_PART_RECORDS, SNAPSHOT_PART_BYTES)?;
        let records = self.filter_snapshot_page(records);
        let Some(out) = self.outbound.as_mut() else {
            return Ok(false);
        };
        if let Some(info) = started {
            out.snapshot = Some(SnapshotOut {
                position: info.position,
                vector: info.vector,
                total: info.records,
                records_sent: 0,
                after: None,
                parts_sent: 0,
                parts_acked: 0,
            });
        }
        let Some(snapshot) = out.snapshot.as_mut() else {
            return Ok(false);
        };
        snapshot.parts_sent += 1;
        snapshot.records_sent += records.len() as u64;
        // Records written while the snapshot is read may be in it too: never report fewer.
        snapshot.total = snapshot.total.max(snapshot.records_sent);
        let (part, position, total) = (snapshot.parts_sent, snapshot.position, snapshot.total);
        let last = next.is_none();
        snapshot.after = next;
        let vector = last.then(|| snapshot.vector.clone());
        if let Some(vector) = &vector {
            // From here the stream is our op log after the snapshot's position, and the peer
            // has everything the snapshot included. The peer's `Ack { position }` closes it.
            out.snapshot = None;
            out.sent_to = position;
            out.wire_to = position;
            out.deferred_since = None;
            out.peer_has.merge(vector);
            // Like an `Ops` with operations: the last part's transaction stores the cursor.
            out.in_flight.push_back((position, now, true));
        }
        self.send(Message::Snapshot {
            position,
            part,
            total,
            records,
            vector,
        });
        Ok(true)
    }

    /// Applies one received snapshot part in its own transaction; the last part also counts
    /// the snapshot's operations as merged and moves the cursor to its position, in the same
    /// transaction. A part applied before a crash stays (joining is idempotent) while the
    /// cursor stays behind, so the next `Pull` gets a whole new snapshot.
    pub(super) fn on_snapshot_part(
        &mut self,
        log: &mut impl SessionLog,
        position: u64,
        part: u32,
        total: u64,
        records: Vec<SnapshotRecord>,
        vector: Option<VersionVector>,
    ) {
        let Some(peer) = self.peer else {
            self.close_with(CloseCode::ProtocolError, "Snapshot before Hello".into());
            return;
        };
        self.snapshot_parts_since_pull = true;
        if let PeerTrust::Origin(node) = self.options.trust {
            self.close_with(
                CloseCode::Unauthorized,
                format!(
                    "node {node} may send only its own operations, and a snapshot carries \
                     other nodes' writes; a device sends one when its op log was compacted \
                     past what this server has received, and the writes in between cannot \
                     reach the server: reconnecting cannot help"
                ),
            );
            return;
        }
        if !self.options.mode.receives() {
            // Not applied: the peer sends it again after our next Pull.
            return;
        }
        if part != 1 && self.snapshot_in.is_none() && self.snapshot_abandoned {
            // The rest of a snapshot our newer Pull replaced (like Ops after a re-pull that do
            // not continue the cursor): ignored, not acknowledged.
            return;
        }
        let expected = self.snapshot_in.as_ref().map_or(1, |s| s.next_part);
        if part == 1 {
            self.snapshot_abandoned = false;
            // A new snapshot (the peer answers a newer Pull) replaces one under way.
            self.snapshot_in = Some(SnapshotIn {
                position,
                total,
                records: 0,
                next_part: 1,
            });
        } else if part != expected
            || self
                .snapshot_in
                .as_ref()
                .is_some_and(|s| s.position != position)
        {
            self.close_with(
                CloseCode::ProtocolError,
                format!("snapshot part {part} arrived where part {expected} was due"),
            );
            return;
        }
        let n = records.len() as u64;
        let last = vector.as_ref().map(|v| (v, position));
        match log.apply_snapshot(peer, &records, last) {
            Ok(applied) => {
                self.ops_applied += applied as u64;
                if let Some(s) = self.snapshot_in.as_mut() {
                    s.records += n;
                    s.total = s.total.max(total).max(s.records);
                    s.next_part = part.saturating_add(1);
                }
                self.send(Message::SnapshotAck { part });
                if let Some(vector) = vector {
                    self.snapshot_in = None;
                    self.cursor = position;
                    self.cursor_unsaved = false;
                    self.repull_pending = false;
                    self.peer_head = self.peer_head.max(position);
                    if let Some(out) = &mut self.outbound {
                        out.peer_has.merge(&vector);
                    }
                    self.send(Message::ack(position));
                }
            }
            Err(e @ blazedb_core::Error::InvalidSnapshot { .. }) => self.close_with(
                CloseCode::ProtocolError,
                format!("the peer sent an invalid snapshot: {e}"),
            ),
            Err(e) => self.close_with(
                CloseCode::InternalError,
                format!("applying a snapshot failed: {e}"),
            ),
        }
    }
}
