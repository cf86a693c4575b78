//! [`Gate`]: admission of connections that have not authenticated yet.
//!
//! A stranger costs the server a socket, a task, TLS and Noise handshakes and a meta-store
//! lookup before it is known to be an enrolled device. The gate keeps those costs apart from
//! the enrolled devices' own budget (`max_connections`): every accepted TCP connection takes a
//! [`Ticket`] first, within a small budget of its own, in total (`max_pending`) and per source
//! address (`max_pending_per_source`; an IPv6 source counts per /64, which one holder usually
//! has whole), and must authenticate before the ticket's deadline (`handshake_timeout` from
//! the moment it was accepted, for all steps together). A connection without a ticket is
//! dropped at once, before any handshake. Authentication gives the ticket back and takes an
//! enrolled slot instead, so strangers can neither hold enrolled slots nor starve each other's
//! honest neighbours for longer than the deadline.
//!
//! Failed authentications (handshakes that fail, refused enrollments and devices) count
//! against their source: past `max_auth_failures` in a minute the source is refused for a
//! while that doubles with every further failure (1 s, 2 s, … up to 60 s). Refusals and
//! failures are logged once a minute in aggregate, not one line each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long failures count against a source.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The longest a throttled source waits.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The budget's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GateLimits {
    pub total: usize,
    pub per_source: usize,
    /// Time from accept to authenticated.
    pub time: Duration,
    /// Failed authentications per source and minute before it is throttled.
    pub failures: u32,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_pending` connections are authenticating.
    Total,
    /// `max_pending_per_source` connections from this source are authenticating.
    Source,
    /// The source failed too often; it may try again after the backoff.
    Throttled,
}

#[derive(Debug, Default)]
struct Failures {
    /// Failures within the current window, and when it started.
    count: u32,
    since: Option<Instant>,
    /// Refused until then.
    blocked_until: Option<Instant>,
}

/// What the once-a-minute log line reports.
#[derive(Debug, Default)]
struct Tally {
    refused_total: u64,
    refused_source: u64,
    refused_throttled: u64,
    failures: u64,
    failing_sources: HashMap<IpAddr, u64>,
}

#[derive(Debug, Default)]
struct State {
    pending: usize,
    per_source: HashMap<IpAddr, usize>,
    failures: HashMap<IpAddr, Failures>,
    tally: Tally,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: GateLimits,
    state: Mutex<State>,
}

/// One connection's place in the gate's budget, given back when dropped (the connection
/// authenticated, or ended).
#[derive(Debug)]
#[must_use = "dropping a ticket gives its place back at once"]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    source: IpAddr,
    deadline: Instant,
}

impl Ticket {
    /// When the connection must have authenticated.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Counts a failed authentication against the source (see [`Gate::failed`]).
    pub fn failed(&self) -> bool {
        self.gate.failed(self.source)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.pending = state.pending.saturating_sub(1);
        if let Some(n) = state.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_source.remove(&self.source);
            }
        }
    }
}

/// The address a source is counted as: IPv4 as is, IPv6 by its /64 (an IPv4-mapped address
/// as the IPv4 address).
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                for s in segments.iter_mut().skip(4) {
                    *s = 0;
                }
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl Gate {
    pub fn new(limits: GateLimits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket for a connection from `ip`, if the budget has room and the source is not
    /// throttled.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let source = source_of(ip);
        let now = Instant::now();
        let mut state = self.lock();
        let throttled = state
            .failures
            .get(&source)
            .and_then(|f| f.blocked_until)
            .is_some_and(|until| until > now);
        let refusal = if throttled {
            Some(Refusal::Throttled)
        } else if state.pending >= self.limits.total {
            Some(Refusal::Total)
        } else if state.per_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source {
            Some(Refusal::Source)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            match refusal {
                Refusal::Total => state.tally.refused_total += 1,
                Refusal::Source => state.tally.refused_source += 1,
                Refusal::Throttled => state.tally.refused_throttled += 1,
            }
            return Err(refusal);
        }
        state.pending += 1;
        *state.per_source.entry(source).or_insert(0) += 1;
        drop(state);
        Ok(Ticket {
            gate: self.clone(),
            source,
            deadline: now + self.limits.time,
        })
    }

    /// Counts a failed authentication from `source` (a handshake that failed, a refused
    /// enrollment or device). Returns true for the first failure of the source in a minute,
    /// which the caller may log on its own line; later ones are counted in the minute's
    /// summary.
    pub fn failed(&self, source: IpAddr) -> bool {
        let source = source_of(source);
        let now = Instant::now();
        let mut state = self.lock();
        state.tally.failures += 1;
        *state.tally.failing_sources.entry(source).or_insert(0) += 1;
        let first_in_tally = state.tally.failing_sources.get(&source) == Some(&1);
        let limit = self.limits.failures;
        let entry = state.failures.entry(source).or_default();
        if entry
            .since
            .is_none_or(|since| now.saturating_duration_since(since) >= FAILURE_WINDOW)
        {
            entry.since = Some(now);
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        if entry.count > limit {
            let doublings = (entry.count - limit - 1).min(6);
            let backoff = (Duration::from_secs(1) * (1 << doublings)).min(MAX_BACKOFF);
            entry.blocked_until = Some(now + backoff);
        }
        first_in_tally
    }

    /// The last minute's refusals and failures as one log line (`None` when there were
    /// none), and a fresh count. Forgets failures older than the window.
    pub fn summary(&self) -> Option<String> {
        let now = Instant::now();
        let mut state = self.lock();
        state.failures.retain(|_, f| {
            f.since
                .is_some_and(|since| now.saturating_duration_since(since) < FAILURE_WINDOW)
                || f.blocked_until.is_some_and(|until| until > now)
        });
        let tally = std::mem::take(&mut state.tally);
        drop(state);
        let refused = tally.refused_total + tally.refused_source + tally.refused_throttled;
        if refused == 0 && tally.failures == 0 {
            return None;
        }
        let mut line = format!(
            "last minute: {} failed authentications from {} addresses",
            tally.failures,
            tally.failing_sources.len()
        );
        if let Some((ip, n)) = tally.failing_sources.iter().max_by_key(|(_, n)| **n) {
            line.push_str(&format!(" (most from {ip}: {n})"));
        }
        if refused > 0 {
            line.push_str(&format!(
                "; refused {refused} connections before any handshake: {} over the limit of \
                 {} authenticating, {} over {} from one address, {} from throttled addresses",
                tally.refused_total,
                self.limits.total,
                tally.refused_source,
                self.limits.per_source,
                tally.refused_throttled
            ));
        }
        Some(line)
    }

    /// Connections authenticating now.
    pub fn pending(&self) -> usize {
        self.lock().pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn gate(total: usize, per_source: usize, failures: u32) -> Arc<Gate> {
        Gate::new(GateLimits {
            total,
            per_source,
            time: Duration::from_secs(10),
            failures,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn tickets_are_limited_per_source_and_in_total_and_given_back_on_drop() {
        let gate = gate(3, 2, 10);
        let a1 = gate.enter(ip("10.0.0.1")).unwrap();
        let _a2 = gate.enter(ip("10.0.0.1")).unwrap();
        assert_eq!(gate.enter(ip("10.0.0.1")).unwrap_err(), Refusal::Source);
        let _b1 = gate.enter(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.enter(ip("10.0.0.3")).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(gate.pending(), 2);
        let _c = gate.enter(ip("10.0.0.3")).unwrap();
        let summary = gate.summary().unwrap();
        assert!(summary.contains("refused 2 connections"), "{summary}");
        assert_eq!(gate.summary(), None);
    }

    #[test]
    fn an_ipv6_source_counts_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        let gate = gate(10, 1, 10);
        let _a = gate.enter(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            gate.enter(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refusal::Source
        );
        let _b = gate.enter(ip("2001:db8:1:3::1")).unwrap();
        let _c = gate.enter(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(gate.enter(ip("10.0.0.1")).unwrap_err(), Refusal::Source);
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_keeps_failing_is_throttled_with_a_growing_backoff() {
        let gate = gate(10, 10, 3);
        let source = ip("10.0.0.9");
        assert!(
            gate.failed(source),
            "the first failure is logged on its own"
        );
        assert!(!gate.failed(source));
        gate.failed(source);
        // Three failures are free; the fourth blocks the source for 1 s.
        drop(gate.enter(source).unwrap());
        gate.failed(source);
        assert_eq!(gate.enter(source).unwrap_err(), Refusal::Throttled);
        // Others are not affected.
        drop(gate.enter(ip("10.0.0.10")).unwrap());
        tokio::time::advance(Duration::from_millis(1100)).await;
        drop(gate.enter(source).unwrap());
        // The fifth doubles it.
        gate.failed(source);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(gate.enter(source).unwrap_err(), Refusal::Throttled);
        tokio::time::advance(Duration::from_millis(1000)).await;
        drop(gate.enter(source).unwrap());
        let summary = gate.summary().unwrap();
        assert!(
            summary.contains("5 failed authentications from 1 addresses"),
            "{summary}"
        );
        assert!(summary.contains("from throttled addresses"), "{summary}");
    }
}
