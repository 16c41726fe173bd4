//! The servers an agent may talk to, the order it tries them in, and the health of its
//! link: connected to one, lost it, trying the next, or cut off from all of them.
//!
//! Every new connection to the node API comes through [`Servers::connect`]: each
//! configured `host:port` is resolved again at each attempt (a name with several addresses
//! is several endpoints), starting after the server last lost, so an agent whose server
//! died moves to the next one. A round in which no address answered opens a jittered
//! backoff ([`crate::backoff`]): until it passes, connects fail at once rather than
//! hammering servers that are down, and a thousand agents do not come back in step.
//!
//! Must never: log once per retry (each transition is logged once; the "still down" line
//! is throttled), or hold a lock across a network wait.

use crate::backoff::Backoff;
use crate::throttle::Throttle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The most `server_address` entries an agent takes: a full round over them must stay
/// short enough that an agent cut off notices and says so.
pub const MAX_SERVERS: usize = 16;

/// How long one address may take to accept TCP and finish the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Retrying after a round in which no server answered.
const ROUND_RETRY_BASE: Duration = Duration::from_millis(500);
const ROUND_RETRY_CAP: Duration = Duration::from_secs(30);

/// How often "all servers down for N s" is repeated while it lasts.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(60);

/// A `server_address` list the agent cannot use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerListError {
    /// No entry at all.
    #[error("server_address is empty: give at least one host:port")]
    Empty,
    /// More entries than [`MAX_SERVERS`].
    #[error("server_address has {0} entries; at most {MAX_SERVERS} are allowed")]
    TooMany(usize),
    /// An entry that is not `host:port`.
    #[error("server_address entry {0:?} is not host:port (a name or IP, and a port 1-65535)")]
    NotHostPort(String),
}

/// Checks the configured servers: 1 to [`MAX_SERVERS`] entries, each `host:port` (a name
/// or an IP, IPv6 in brackets) with a non-zero port. Names are not resolved here: they are
/// resolved at every connect, so DNS changes reach a running agent.
pub fn check_servers(entries: Vec<String>) -> Result<Vec<String>, ServerListError> {
    if entries.is_empty() {
        return Err(ServerListError::Empty);
    }
    if entries.len() > MAX_SERVERS {
        return Err(ServerListError::TooMany(entries.len()));
    }
    for entry in &entries {
        let valid = entry.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !valid {
            return Err(ServerListError::NotHostPort(entry.clone()));
        }
    }
    Ok(entries)
}

/// The order to try `len` entries in: from `start`, wrapping around, each once.
pub fn rotation(len: usize, start: usize) -> impl Iterator<Item = usize> {
    let start = if len == 0 { 0 } else { start % len };
    (0..len).map(move |k| (start + k) % len)
}

/// The agent's link to the servers, as `writ healthcheck` will show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHealth {
    /// The `server_address` entry (and the address it resolved to) the agent is
    /// connected to; `None` while it has none.
    pub connected_to: Option<String>,
    /// When the agent connected, or lost its server (wall-clock).
    pub since: SystemTime,
    /// The last failure: why a server was lost or why no server answered.
    pub last_error: Option<String>,
    /// Whether no server answered a whole round (the agent is cut off now).
    pub cut_off: bool,
    /// How many times the agent reconnected after being cut off. It only grows, so a
    /// watcher never misses a recovery, however briefly the cut-off lasted.
    pub recoveries: u64,
}

/// One change of the link, logged once.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Transition {
    Trying(usize),
    Connected {
        entry: usize,
        down_for: Option<Duration>,
    },
    Lost(usize),
    AllDown {
        retry_in: Duration,
    },
    StillDown {
        down_for: Duration,
        retry_in: Duration,
    },
}

/// The link's state machine: pure, time passed in.
#[derive(Debug)]
struct Link {
    len: usize,
    /// Where the next round starts.
    cursor: usize,
    connected: Option<usize>,
    /// Entries announced as "trying" since the last connect (bit per entry).
    announced: u32,
    down_since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Link {
    fn new(len: usize) -> Self {
        Link {
            len,
            cursor: 0,
            connected: None,
            announced: 0,
            down_since: None,
            retry_at: None,
            backoff: Backoff::new(ROUND_RETRY_BASE, ROUND_RETRY_CAP),
        }
    }

    /// The entries to try now, in order, or how long until the next round may start. A
    /// new connection while one is marked connected means that one is gone (the channel
    /// reconnects only when its connection closed).
    fn plan(&mut self, now: Instant) -> (Result<Vec<usize>, Duration>, Option<Transition>) {
        if let Some(at) = self.retry_at.filter(|at| *at > now) {
            return (Err(at - now), None);
        }
        let lost = self.lost();
        (Ok(rotation(self.len, self.cursor).collect()), lost)
    }

    fn trying(&mut self, entry: usize) -> Option<Transition> {
        let bit = 1u32 << (entry % 32);
        if self.announced & bit != 0 {
            return None;
        }
        self.announced |= bit;
        Some(Transition::Trying(entry))
    }

    /// Returns whether this ends a cut-off, with the transition to log.
    fn connected(&mut self, entry: usize, now: Instant) -> (bool, Transition) {
        self.connected = Some(entry);
        self.cursor = entry;
        self.announced = 0;
        self.retry_at = None;
        self.backoff.reset();
        let down_for = self
            .down_since
            .take()
            .map(|since| now.saturating_duration_since(since));
        (
            down_for.is_some(),
            Transition::Connected { entry, down_for },
        )
    }

    /// The connected server is gone: the next round starts with the one after it.
    fn lost(&mut self) -> Option<Transition> {
        let entry = self.connected.take()?;
        self.cursor = (entry + 1) % self.len.max(1);
        Some(Transition::Lost(entry))
    }

    /// A connection no longer in use was closed on purpose: not a loss.
    fn release(&mut self) {
        self.connected = None;
    }

    /// No address of any entry answered: back off, and say so.
    fn round_failed(&mut self, now: Instant) -> Transition {
        let retry_in = self.backoff.next_delay();
        self.retry_at = Some(now + retry_in);
        match self.down_since {
            None => {
                self.down_since = Some(now);
                Transition::AllDown { retry_in }
            }
            Some(since) => Transition::StillDown {
                down_for: now.saturating_duration_since(since),
                retry_in,
            },
        }
    }
}

/// The configured servers and the agent's link to them.
#[derive(Debug)]
pub struct Servers {
    entries: Vec<String>,
    link: Mutex<Link>,
    health: watch::Sender<NodeHealth>,
    still_down: Throttle,
    /// Until the agent is up, transitions are debug detail: a start that fails says why
    /// in its one error line, and one that succeeds says where it connected once.
    starting: std::sync::atomic::AtomicBool,
}

impl Servers {
    /// Servers from a checked list (see [`check_servers`]).
    pub fn new(entries: Vec<String>) -> Self {
        Servers {
            link: Mutex::new(Link::new(entries.len())),
            entries,
            health: watch::channel(NodeHealth {
                connected_to: None,
                since: SystemTime::now(),
                last_error: None,
                cut_off: false,
                recoveries: 0,
            })
            .0,
            still_down: Throttle::new(STILL_DOWN_EVERY),
            starting: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The entries, as configured.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// The link's health now and at every change.
    pub fn health(&self) -> watch::Receiver<NodeHealth> {
        self.health.subscribe()
    }

    fn with_link<T>(&self, f: impl FnOnce(&mut Link) -> T) -> T {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut link)
    }

    /// Connects to the first address that answers, trying each entry in rotation order and
    /// each address a name resolves to; `dial` makes one connection (TCP and TLS), within
    /// [`CONNECT_TIMEOUT`]. Fails at once while the backoff after a failed round runs.
    pub async fn connect<T, F, Fut>(&self, dial: F) -> std::io::Result<T>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = std::io::Result<T>>,
    {
        let (plan, lost) = self.with_link(|l| l.plan(Instant::now()));
        if let Some(lost) = lost {
            self.note(lost, Some("connection closed".to_owned()));
        }
        let order = plan.map_err(|wait| {
            std::io::Error::other(format!(
                "no server answered; next attempt in {}",
                humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
            ))
        })?;
        let mut errors = Vec::new();
        for index in order {
            let Some(entry) = self.entries.get(index) else {
                continue;
            };
            if let Some(trying) = self.with_link(|l| l.trying(index)) {
                self.note(trying, None);
            }
            let lookup =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(entry.as_str()));
            let addresses = match lookup.await {
                Ok(Ok(found)) => found.collect::<Vec<_>>(),
                Ok(Err(e)) => {
                    errors.push(format!("{entry}: {e}"));
                    continue;
                }
                Err(_) => {
                    errors.push(format!("{entry}: name lookup timed out"));
                    continue;
                }
            };
            if addresses.is_empty() {
                errors.push(format!("{entry}: resolves to no address"));
            }
            for address in addresses {
                match tokio::time::timeout(CONNECT_TIMEOUT, dial(address)).await {
                    Ok(Ok(connection)) => {
                        let (recovered, connected) =
                            self.with_link(|l| l.connected(index, Instant::now()));
                        self.health.send_modify(|h| {
                            h.connected_to = Some(format!("{entry} ({address})"));
                            h.since = SystemTime::now();
                            h.cut_off = false;
                            if recovered {
                                h.recoveries += 1;
                            }
                        });
                        self.log(&connected, None);
                        return Ok(connection);
                    }
                    Ok(Err(e)) => errors.push(format!("{entry} ({address}): {e}")),
                    Err(_) => errors.push(format!(
                        "{entry} ({address}): no answer within {}",
                        humantime::format_duration(CONNECT_TIMEOUT)
                    )),
                }
            }
        }
        let error = errors.join("; ");
        let down = self.with_link(|l| l.round_failed(Instant::now()));
        self.health.send_modify(|h| {
            if h.connected_to.take().is_some() || !h.cut_off {
                h.since = SystemTime::now();
            }
            h.cut_off = true;
            h.last_error = Some(error.clone());
        });
        self.log(&down, Some(&error));
        Err(std::io::Error::other(format!(
            "no server answered: {error}"
        )))
    }

    /// The server the agent is connected to is gone (its Sync stream broke, or it said it
    /// cannot serve): the next connection starts with the entry after it. Returns whether
    /// this was news (the agent was connected until now).
    pub fn lost(&self, reason: &str) -> bool {
        match self.with_link(Link::lost) {
            Some(lost) => {
                self.note(lost, Some(reason.to_owned()));
                true
            }
            None => false,
        }
    }

    /// A connection closed on purpose (attestation's own channel): not a loss.
    pub fn release(&self) {
        self.with_link(Link::release);
    }

    /// Publishes and logs a transition that is not a connect.
    fn note(&self, transition: Transition, error: Option<String>) {
        if matches!(transition, Transition::Lost(_)) {
            self.health.send_modify(|h| {
                h.connected_to = None;
                h.since = SystemTime::now();
                if error.is_some() {
                    h.last_error.clone_from(&error);
                }
            });
        }
        self.log(&transition, error.as_deref());
    }

    /// The agent is up: from now on every transition is logged at info or warn. Logs
    /// where it is connected.
    pub fn started(&self) {
        self.starting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match &self.health.borrow().connected_to {
            Some(server) => tracing::info!(%server, "connected to server"),
            None => tracing::info!("started; not connected to a server yet"),
        }
    }

    fn log(&self, transition: &Transition, error: Option<&str>) {
        let name = |i: &usize| self.entries.get(*i).map_or("?", String::as_str);
        if self.starting.load(std::sync::atomic::Ordering::Relaxed) {
            let (what, server) = match transition {
                Transition::Trying(entry) => ("trying server", name(entry)),
                Transition::Connected { entry, .. } => ("connected to server", name(entry)),
                Transition::Lost(entry) => ("lost server", name(entry)),
                Transition::AllDown { .. } | Transition::StillDown { .. } => {
                    ("all servers down", "")
                }
            };
            tracing::debug!(
                server,
                error = error.unwrap_or_default(),
                "starting: {what}"
            );
            return;
        }
        match transition {
            Transition::Trying(entry) => tracing::info!(server = name(entry), "trying server"),
            Transition::Connected { entry, down_for } => match down_for {
                Some(down_for) => tracing::info!(
                    server = name(entry),
                    cut_off_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                    "connected to server after being cut off"
                ),
                None => tracing::info!(server = name(entry), "connected to server"),
            },
            Transition::Lost(entry) => {
                tracing::warn!(
                    server = name(entry),
                    reason = error.unwrap_or("unknown"),
                    "lost server"
                )
            }
            Transition::AllDown { retry_in } => tracing::warn!(
                servers = self.entries.len(),
                error = error.unwrap_or_default(),
                ?retry_in,
                "all servers down; serving cached SVIDs until they expire"
            ),
            Transition::StillDown { down_for, retry_in } => {
                if let Some(suppressed) = self.still_down.allow() {
                    tracing::warn!(
                        down_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                        error = error.unwrap_or_default(),
                        suppressed,
                        ?retry_in,
                        "all servers still down"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn rotation_starts_anywhere_wraps_and_visits_each_once() {
        assert_eq!(rotation(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(3, 2).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(rotation(3, 7).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(1, 0).collect::<Vec<_>>(), [0]);
        assert_eq!(rotation(0, 5).count(), 0);
    }

    #[test]
    fn a_lost_server_is_tried_last_and_a_connect_sticks() {
        let now = Instant::now();
        let mut link = Link::new(3);
        assert_eq!(link.plan(now).0.unwrap(), [0, 1, 2]);
        link.connected(1, now);
        // While connected to 1, a reconnect (its connection closed) starts after it.
        let (plan, lost) = link.plan(now);
        assert_eq!(lost, Some(Transition::Lost(1)));
        assert_eq!(plan.unwrap(), [2, 0, 1]);
        link.connected(2, now);
        assert_eq!(link.lost(), Some(Transition::Lost(2)));
        assert_eq!(link.lost(), None, "a loss is reported once");
        assert_eq!(link.plan(now).0.unwrap(), [0, 1, 2]);
        // A connection released on purpose moves nothing.
        link.connected(0, now);
        link.release();
        assert_eq!(link.plan(now), (Ok(vec![0, 1, 2]), None));
    }

    #[test]
    fn a_failed_round_backs_off_then_a_connect_ends_the_cut_off() {
        let start = Instant::now();
        let mut link = Link::new(2);
        link.connected(0, start);
        link.lost();
        let first = link.round_failed(start);
        let Transition::AllDown { retry_in } = first else {
            panic!("first failed round: {first:?}");
        };
        assert!(retry_in <= ROUND_RETRY_BASE);
        // Within the backoff nothing is tried.
        assert!(link.plan(start).0.is_err());
        let later = start + ROUND_RETRY_CAP;
        assert_eq!(link.plan(later).0.unwrap(), [1, 0]);
        assert!(matches!(
            link.round_failed(later),
            Transition::StillDown { down_for, .. } if down_for == ROUND_RETRY_CAP
        ));
        let (recovered, connected) = link.connected(1, later + ROUND_RETRY_CAP);
        assert!(recovered);
        assert_eq!(
            connected,
            Transition::Connected {
                entry: 1,
                down_for: Some(2 * ROUND_RETRY_CAP)
            }
        );
        // A plain reconnect (no failed round in between) is no recovery.
        link.lost();
        assert!(!link.connected(0, later).0);
    }

    #[test]
    fn each_entry_is_announced_once_per_outage() {
        let now = Instant::now();
        let mut link = Link::new(2);
        assert_eq!(link.trying(0), Some(Transition::Trying(0)));
        assert_eq!(link.trying(1), Some(Transition::Trying(1)));
        assert_eq!(link.trying(0), None);
        link.round_failed(now);
        assert_eq!(link.trying(1), None, "a retry storm stays quiet");
        link.connected(1, now);
        assert_eq!(link.trying(0), Some(Transition::Trying(0)));
    }

    #[test]
    fn server_lists_are_bounded_and_checked() {
        assert!(matches!(check_servers(vec![]), Err(ServerListError::Empty)));
        let many: Vec<String> = (0..=MAX_SERVERS).map(|i| format!("s{i}:1")).collect();
        assert!(matches!(
            check_servers(many),
            Err(ServerListError::TooMany(17))
        ));
        for bad in ["host", "host:", ":80", "host:0", "host:65536", "a b:80"] {
            assert!(
                matches!(
                    check_servers(vec![bad.into()]),
                    Err(ServerListError::NotHostPort(_))
                ),
                "{bad}"
            );
        }
        let good = vec![
            "a:1".to_owned(),
            "[::1]:8443".into(),
            "10.0.0.1:65535".into(),
        ];
        assert_eq!(check_servers(good.clone()).unwrap(), good);
    }

    #[tokio::test]
    async fn connect_moves_past_dead_addresses_and_after_a_loss_to_the_next() {
        let servers = Servers::new(vec![
            "127.0.0.1:1".into(),
            "127.0.0.1:2".into(),
            "127.0.0.1:3".into(),
        ]);
        let dial = |dead: u16| {
            move |address: SocketAddr| async move {
                if address.port() == dead {
                    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                } else {
                    Ok(address.port())
                }
            }
        };
        assert_eq!(servers.connect(dial(1)).await.unwrap(), 2);
        let health = servers.health().borrow().clone();
        assert_eq!(
            health.connected_to.as_deref(),
            Some("127.0.0.1:2 (127.0.0.1:2)")
        );
        servers.lost("sync stream broke");
        assert_eq!(servers.health().borrow().connected_to, None);
        assert_eq!(
            servers.health().borrow().last_error.as_deref(),
            Some("sync stream broke")
        );
        // The next server after the lost one, even though the lost one is up again.
        assert_eq!(servers.connect(dial(0)).await.unwrap(), 3);
        assert_eq!(servers.health().borrow().recoveries, 0);

        let none = |_: SocketAddr| async {
            Err::<u16, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        };
        servers.lost("gone");
        let e = servers.connect(none).await.unwrap_err().to_string();
        assert!(
            e.contains("127.0.0.1:1") && e.contains("127.0.0.1:3"),
            "{e}"
        );
        assert!(servers.health().borrow().cut_off);
        // Within the backoff, a connect fails without dialling.
        let e = servers.connect(dial(0)).await.unwrap_err().to_string();
        assert!(e.contains("next attempt in"), "{e}");
    }
}
