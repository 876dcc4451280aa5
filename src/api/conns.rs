//! Connection admission: how many connections the server holds, and which one goes when a
//! new one arrives at the limit.
//!
//! The accept loop never waits for room: a slow or hostile client holding connections open
//! (half-sent request heads, idle keep-alive) must not lock everyone else out. At the limit,
//! the connection idle the longest (no request in progress) is closed to make room; when
//! every connection is busy, the new one is refused. The same rule applies per source
//! address when a per-source limit is set.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::sync;

/// One open connection, as admission sees it.
pub(crate) struct Conn {
    id: u64,
    peer: IpAddr,
    /// Requests being served on it now (0: idle, waiting for a request head).
    busy: AtomicUsize,
    /// When it was accepted or last finished a request (ms since the registry started).
    last_active: AtomicU64,
    /// A duplicate of the connection's socket, to close it from outside: `shutdown` on it
    /// ends the connection wherever it is served, with nothing to poll on the request path
    /// (and holding the duplicate means the descriptor number is never reused meanwhile).
    socket: Option<TcpStream>,
    evicted: AtomicBool,
}

impl Conn {
    /// The address the connection comes from.
    pub(crate) fn peer(&self) -> IpAddr {
        self.peer
    }

    /// Marks a request in progress until the guard is dropped.
    pub(crate) fn request(self: &Arc<Self>, conns: &Conns) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy {
            conn: Arc::clone(self),
            epoch: conns.epoch,
        }
    }

    /// Closes the connection (reads and writes end at once).
    fn close(&self) {
        self.evicted.store(true, Ordering::Relaxed);
        if let Some(s) = &self.socket {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Whether admission closed this connection to make room.
    #[cfg(test)]
    pub(crate) fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// A request in progress on a connection.
pub(crate) struct Busy {
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.conn.last_active.store(ms, Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    per_source: HashMap<IpAddr, usize>,
}

/// The registry of open connections.
pub(crate) struct Conns {
    table: Mutex<Table>,
    max: usize,
    max_per_source: Option<usize>,
    epoch: Instant,
}

/// What admission decided for a new connection.
pub(crate) enum Admission {
    /// Serve it; drop the [`Admitted`] when it closes.
    Admit(Admitted),
    /// Refuse it: every connection (of its source) is busy.
    Refuse,
}

/// An admitted connection: removed from the registry when dropped.
pub(crate) struct Admitted {
    pub(crate) conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = sync::lock(&self.conns.table);
        if t.open.remove(&self.conn.id).is_some() {
            if let Some(n) = t.per_source.get_mut(&self.conn.peer) {
                *n -= 1;
                if *n == 0 {
                    t.per_source.remove(&self.conn.peer);
                }
            }
        }
    }
}

impl Conns {
    pub(crate) fn new(max: usize, max_per_source: Option<usize>) -> Conns {
        Conns {
            table: Mutex::new(Table::default()),
            max: max.max(1),
            max_per_source,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Open connections now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        sync::lock(&self.table).open.len()
    }

    /// Admits a connection from `peer` (`socket`: a duplicate of its socket, to close it by),
    /// closing the longest-idle connection (of the same source, when that source is at its
    /// own limit) to make room if needed. Never waits.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr, socket: Option<TcpStream>) -> Admission {
        let mut t = sync::lock(&self.table);
        let from_peer = t.per_source.get(&peer).copied().unwrap_or(0);
        let source_full = self.max_per_source.is_some_and(|m| from_peer >= m);
        if source_full || t.open.len() >= self.max {
            let victim = t
                .open
                .values()
                .filter(|c| !source_full || c.peer == peer)
                .filter(|c| c.busy.load(Ordering::Relaxed) == 0)
                // Ties (same millisecond) go to the older connection.
                .min_by_key(|c| (c.last_active.load(Ordering::Relaxed), c.id))
                .map(|c| c.id);
            let Some(victim) = victim else {
                return Admission::Refuse;
            };
            // Out of the table now, so that a burst of arrivals picks distinct victims.
            if let Some(c) = t.open.remove(&victim) {
                c.close();
                if let Some(n) = t.per_source.get_mut(&c.peer) {
                    *n -= 1;
                    if *n == 0 {
                        t.per_source.remove(&c.peer);
                    }
                }
            }
        }
        t.next_id += 1;
        let conn = Arc::new(Conn {
            id: t.next_id,
            peer,
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.now_ms()),
            socket,
            evicted: AtomicBool::new(false),
        });
        t.open.insert(conn.id, Arc::clone(&conn));
        *t.per_source.entry(peer).or_default() += 1;
        Admission::Admit(Admitted {
            conn,
            conns: Arc::clone(self),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn admit(c: &Arc<Conns>, peer: IpAddr) -> Option<Admitted> {
        match c.admit(peer, None) {
            Admission::Admit(a) => Some(a),
            Admission::Refuse => None,
        }
    }

    #[test]
    fn the_longest_idle_connection_makes_room() {
        let conns = Arc::new(Conns::new(3, None));
        let a = admit(&conns, ip(1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = admit(&conns, ip(1)).unwrap();
        let c = admit(&conns, ip(2)).unwrap();
        // b serves a request: busy, never a victim; a is the oldest idle one.
        let busy = b.conn.request(&conns);
        let d = admit(&conns, ip(3)).unwrap();
        assert_eq!(conns.len(), 3);
        assert!(a.conn.evicted(), "a was closed");
        assert!(!b.conn.evicted() && !c.conn.evicted());
        drop(a);
        assert_eq!(conns.len(), 3, "dropping a victim does not count twice");
        // c and d idle, b busy: the next arrival evicts c (older than d).
        let _e = admit(&conns, ip(4)).unwrap();
        assert!(c.conn.evicted(), "c was closed");
        assert!(!d.conn.evicted());
        drop((c, d));
        drop(busy);
        drop(b);
        assert_eq!(conns.len(), 1);
    }

    #[test]
    fn closing_shuts_the_socket_down() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (served, _) = l.accept().unwrap();
        let conns = Arc::new(Conns::new(1, None));
        let a = match conns.admit(ip(1), Some(served.try_clone().unwrap())) {
            Admission::Admit(a) => a,
            Admission::Refuse => unreachable!(),
        };
        let _b = admit(&conns, ip(2)).unwrap();
        assert!(a.conn.evicted());
        // The served side (what hyper reads from) sees the end at once.
        let mut buf = [0u8; 1];
        assert_eq!((&served).read(&mut buf).unwrap(), 0);
        drop(client);
    }

    #[test]
    fn when_every_connection_is_busy_the_new_one_is_refused() {
        let conns = Arc::new(Conns::new(2, None));
        let a = admit(&conns, ip(1)).unwrap();
        let b = admit(&conns, ip(1)).unwrap();
        let _ba = a.conn.request(&conns);
        let _bb = b.conn.request(&conns);
        assert!(admit(&conns, ip(2)).is_none());
        assert_eq!(conns.len(), 2);
    }

    #[test]
    fn a_source_at_its_limit_only_evicts_its_own() {
        let conns = Arc::new(Conns::new(100, Some(2)));
        let other = admit(&conns, ip(9)).unwrap();
        let _a = admit(&conns, ip(1)).unwrap();
        let b = admit(&conns, ip(1)).unwrap();
        let _busy = b.conn.request(&conns);
        // Third from ip(1): its idle one (a) goes, not the other source's.
        let _c = admit(&conns, ip(1)).unwrap();
        assert_eq!(conns.len(), 3);
        assert_eq!(sync::lock(&conns.table).per_source[&ip(1)], 2);
        drop(other);
        assert!(!sync::lock(&conns.table).per_source.contains_key(&ip(9)));
    }
}
