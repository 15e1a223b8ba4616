//! The kept history of routed requests, and positions (PROTOCOL.md §11).
//!
//! Every request this node routes gets a position, `<epoch>.<sequence>`: the epoch is drawn at
//! random when the history starts, so a restarted node never takes an old position for one of
//! its own; the sequence counts routed requests from 1. The history keeps the `message` frame
//! of each request (with its position) and its tags, at most `--history` of them, at most
//! `--history-bytes` bytes of frames, none older than `--history-ttl`; the oldest go first.
//!
//! In a cluster with history (PROTOCOL.md §10, §11) the positions are the cluster's: Redis gives
//! each request its sequence and the epoch of the shared history, and every node keeps what it
//! receives from the bus in that order ([`Sequencer::keep_at`]), so a client may resume on any
//! node. A new epoch from Redis (its history was lost) or a hole in the sequence restarts this
//! node's copy ([`Sequencer::restart`]).
//!
//! The history's lock is also the node's sequencer: a request takes its position, is kept and
//! collects its recipients under it, and a connection is registered (and its replay read)
//! under it too; a delivery then takes its turn to offer before it lets the sequencer go. So
//! every connection receives positions in increasing order, and a request routed while a
//! connection resumes reaches it exactly once: in the replay (it was kept before the
//! connection registered) or live (it collected the connection), never both.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tagcast::Tags;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Longest position the protocol allows.
pub const MAX_POSITION_BYTES: usize = 64;

/// The bounds of the kept history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most requests kept (`--history`); 0 turns the history off.
    pub requests: usize,
    /// Most bytes of kept frames (`--history-bytes`).
    pub bytes: usize,
    /// Oldest kept request (`--history-ttl`).
    pub ttl: Duration,
}

/// A `since` that is not a position at all (HTTP 400 at the handshake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'since' must be a position: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -")]
pub struct MalformedPosition;

/// Checks that `since` is well-formed (any history's position is).
pub fn check_position(since: &str) -> Result<(), MalformedPosition> {
    let ok = !since.is_empty()
        && since.len() <= MAX_POSITION_BYTES
        && since
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    ok.then_some(()).ok_or(MalformedPosition)
}

#[derive(Debug)]
struct Entry {
    sequence: u64,
    at: Instant,
    tags: Tags,
    /// The `message` frame, with its position.
    frame: Utf8Bytes,
}

#[derive(Debug, Default)]
struct Ring {
    /// The epoch of the positions: this node's, or its cluster's.
    epoch: String,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The sequence of the last routed request (0: none yet).
    last: u64,
    /// The highest sequence that fell out of the history (0: none).
    evicted_through: u64,
    /// Whether this copy follows a cluster's history ([`Sequencer::restart`]), where another
    /// node may be ahead.
    follows_cluster: bool,
    /// The highest `skip_through` a replay gave in this epoch: deliveries after it skip no one.
    skipped_through: u64,
}

impl Ring {
    fn evict(&mut self, limits: &Limits, now: Instant) {
        while let Some(oldest) = self.entries.front() {
            let expired = now.duration_since(oldest.at) >= limits.ttl;
            if !expired && self.entries.len() <= limits.requests && self.bytes <= limits.bytes {
                break;
            }
            let gone = self.entries.pop_front().expect("a front entry");
            self.bytes -= gone.frame.len();
            self.evicted_through = gone.sequence;
        }
    }
}

/// What a connection that resumes gets: the kept requests it missed, and whether that is all.
#[derive(Debug, Default)]
pub struct Replay {
    /// The `message` frames, oldest first.
    pub frames: Vec<Utf8Bytes>,
    /// Whether no request after `since` is missing from them.
    pub recovered: bool,
    /// In a cluster, `since` may come from a node ahead of this one: the sequence up to which
    /// this node's later deliveries must skip the connection (it has them), else 0.
    pub skip_through: u64,
}

/// How far ahead of this node a cluster's position may be and still count as one this node
/// has not reached yet (nodes follow the cluster's history a few requests apart); further, it
/// is a position this history never gave.
const MAX_LAG: u64 = 100_000;

/// The kept history of a node; its lock is the node's sequencer.
#[derive(Debug)]
pub struct History {
    limits: Limits,
    ring: Mutex<Ring>,
    /// Taken by a delivery before it lets the sequencer go, and held while it offers: so
    /// deliveries offer in position order, while opens wait only for the sequencer.
    offers: Mutex<()>,
}

/// The sequencer, held while a request is positioned, kept and offered, or while a connection
/// is registered and its replay read.
#[derive(Debug)]
pub struct Sequencer<'a> {
    history: &'a History,
    ring: MutexGuard<'a, Ring>,
}

impl History {
    /// An empty history with a fresh random epoch.
    pub fn new(limits: Limits) -> Self {
        Self::with_epoch(limits, new_epoch())
    }

    /// An empty history with the given epoch (tests).
    pub fn with_epoch(limits: Limits, epoch: String) -> Self {
        History {
            limits,
            ring: Mutex::new(Ring {
                epoch,
                ..Ring::default()
            }),
            offers: Mutex::new(()),
        }
    }

    /// Takes the sequencer.
    pub fn lock(&self) -> Sequencer<'_> {
        Sequencer {
            history: self,
            ring: self.ring.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// How many requests and bytes of frames are kept now.
    pub fn size(&self) -> (usize, usize) {
        let mut ring = self.lock().ring;
        ring.evict(&self.limits, Instant::now());
        (ring.entries.len(), ring.bytes)
    }

    /// Its bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// A position's epoch and sequence; `None` when it is not one of ours (another history's
/// format).
pub fn split_position(position: &str) -> Option<(&str, u64)> {
    let (epoch, sequence) = position.split_once('.')?;
    Some((epoch, sequence.parse().ok()?))
}

impl Ring {
    fn position(&self, sequence: u64) -> String {
        format!("{}.{sequence}", self.epoch)
    }

    /// The sequence of one of this history's positions; `None` for another history's.
    fn sequence_of(&self, position: &str) -> Option<u64> {
        split_position(position)
            .filter(|(epoch, _)| *epoch == self.epoch)
            .map(|(_, sequence)| sequence)
    }
}

impl<'a> Sequencer<'a> {
    /// Lets the sequencer go, holding the turn to offer instead: deliveries offer in the order
    /// of their positions, and connections may open meanwhile.
    pub fn offer_turn(self) -> MutexGuard<'a, ()> {
        let turn = self
            .history
            .offers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        drop(self.ring);
        turn
    }

    /// The position the next routed request takes.
    pub fn next_position(&self) -> String {
        self.ring.position(self.ring.last + 1)
    }

    /// Keeps the request that took [`next_position`](Sequencer::next_position): its tags and
    /// its `message` frame.
    pub fn keep(&mut self, tags: Tags, frame: Utf8Bytes) {
        let sequence = self.ring.last + 1;
        self.keep_at(sequence, Instant::now(), tags, frame);
    }

    /// The epoch of the positions.
    pub fn epoch(&self) -> &str {
        &self.ring.epoch
    }

    /// The sequence of the last routed request (0: none yet).
    pub fn last(&self) -> u64 {
        self.ring.last
    }

    /// The position of `sequence` in this history's epoch.
    pub fn position(&self, sequence: u64) -> String {
        self.ring.position(sequence)
    }

    /// Keeps a request the cluster positioned at `sequence` (routed at `at`), which must come
    /// after the last one kept: a hole before it counts as fallen out, so resuming from before
    /// the hole is not recovered.
    pub fn keep_at(&mut self, sequence: u64, at: Instant, tags: Tags, frame: Utf8Bytes) {
        let ring = &mut *self.ring;
        debug_assert!(sequence > ring.last, "kept out of order");
        if sequence > ring.last + 1 {
            ring.evicted_through = sequence - 1;
        }
        ring.last = sequence;
        ring.bytes += frame.len();
        ring.entries.push_back(Entry {
            sequence,
            at,
            tags,
            frame,
        });
        ring.evict(&self.history.limits, Instant::now());
    }

    /// Forgets everything kept and goes on in `epoch` after `last`: this node's copy of the
    /// cluster's history no longer covers what it missed (or the cluster lost its history), so
    /// a resume from any earlier position is not recovered.
    pub fn restart(&mut self, epoch: &str, last: u64) {
        let ring = &mut *self.ring;
        ring.entries.clear();
        ring.bytes = 0;
        ring.epoch = epoch.to_owned();
        ring.last = last;
        ring.evicted_through = last;
        ring.follows_cluster = true;
        ring.skipped_through = 0;
    }

    /// Whether a connection may have been resumed from a position at or after `sequence`
    /// without this node having reached it ([`Replay::skip_through`]): only then must a
    /// delivery of `sequence` look for such connections.
    pub fn skips(&self, sequence: u64) -> bool {
        sequence <= self.ring.skipped_through
    }

    /// The position of the last routed request (the cursor of a fresh connection).
    pub fn last_position(&self) -> String {
        self.ring.position(self.ring.last)
    }

    /// The kept requests after `since` that a connection with `tags` would have received.
    /// A position of another history (an earlier epoch) replays everything kept, unrecovered.
    pub fn replay(&mut self, since: &str, tags: &Tags) -> Replay {
        self.ring.evict(&self.history.limits, Instant::now());
        let ring = &*self.ring;
        let (after, recovered, skip_through) = match ring.sequence_of(since) {
            Some(s) if s <= ring.last => (s, s >= ring.evicted_through, 0),
            // Given by a node ahead of this one: nothing here to replay yet, and what this node
            // delivers up to `s` the client already has.
            Some(s) if ring.follows_cluster && s - ring.last <= MAX_LAG => (s, true, s),
            _ => (0, false, 0),
        };
        let frames = ring
            .entries
            .iter()
            .filter(|e| e.sequence > after && tags.contains_all(&e.tags))
            .map(|e| e.frame.clone())
            .collect();
        self.ring.skipped_through = self.ring.skipped_through.max(skip_through);
        Replay {
            frames,
            recovered,
            skip_through,
        }
    }
}

/// A page of the history for `GET /history`.
#[derive(Debug, Default)]
pub struct Page {
    /// The kept `message` frames, oldest first.
    pub frames: Vec<Utf8Bytes>,
    /// Whether no request after `since` (or since the history began) is missing.
    pub recovered: bool,
    /// The position to pass as `since` for more: the last frame's, or the latest.
    pub pos: String,
}

impl Sequencer<'_> {
    /// At most `limit` kept requests after `since` (all kept without it) that a connection
    /// with `tags` would have received.
    pub fn page(&mut self, since: Option<&str>, tags: &Tags, limit: usize) -> Page {
        self.ring.evict(&self.history.limits, Instant::now());
        let ring = &*self.ring;
        let (after, recovered) = match since.map(|s| ring.sequence_of(s)) {
            None => (0, ring.evicted_through == 0),
            Some(Some(s)) if s <= ring.last => (s, s >= ring.evicted_through),
            // Given by a node ahead of this one (see `replay`): nothing yet, and the cursor
            // stays where the caller is, so that the next page does not go back.
            Some(Some(s)) if ring.follows_cluster && s - ring.last <= MAX_LAG => {
                return Page {
                    frames: Vec::new(),
                    recovered: true,
                    pos: ring.position(s),
                }
            }
            Some(_) => (0, false),
        };
        let mut last = ring.last;
        let mut frames = Vec::new();
        for entry in ring
            .entries
            .iter()
            .filter(|e| e.sequence > after && tags.contains_all(&e.tags))
        {
            if frames.len() == limit {
                break;
            }
            frames.push(entry.frame.clone());
            last = entry.sequence;
        }
        Page {
            frames,
            recovered,
            pos: ring.position(last),
        }
    }
}

/// A fresh random epoch: a few base-36 characters.
pub fn new_epoch() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    base36(random ^ nanos.rotate_left(32))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: usize) -> Limits {
        Limits {
            requests,
            bytes: usize::MAX,
            ttl: Duration::from_secs(300),
        }
    }

    fn route(history: &History, tags: Tags, text: &str) -> String {
        let mut s = history.lock();
        let pos = s.next_position();
        s.keep(tags, Utf8Bytes::from(format!("{text}@{pos}")));
        pos
    }

    #[test]
    fn positions_are_well_formed_and_new_per_history() {
        let a = History::new(limits(10));
        let b = History::new(limits(10));
        let pos = route(&a, Tags::new(), "x");
        check_position(&pos).unwrap();
        assert_ne!(a.lock().epoch(), b.lock().epoch());
        assert!(check_position("").is_err());
        assert!(check_position("a b").is_err());
        assert!(check_position(&"a".repeat(65)).is_err());
    }

    #[test]
    fn replay_matches_tags_and_says_whether_it_is_whole() {
        let h = History::with_epoch(limits(3), "e".into());
        let start = h.lock().last_position();
        assert_eq!(start, "e.0");
        route(&h, Tags::new().with("room", 1), "a");
        let after_a = route(&h, Tags::new().with("room", 2), "b");
        route(&h, Tags::new(), "c");
        let room1 = Tags::new().with("room", 1).with("user", 7);
        let r = h.lock().replay(&start, &room1);
        assert!(r.recovered);
        assert_eq!(r.frames, ["a@e.1", "c@e.3"]);
        let r = h.lock().replay(&after_a, &room1);
        assert_eq!((r.recovered, r.frames.len()), (true, 1));
        // A fourth request pushes the first out: resuming from before it is not recovered.
        route(&h, Tags::new(), "d");
        let r = h.lock().replay(&start, &room1);
        assert!(!r.recovered);
        assert_eq!(r.frames, ["c@e.3", "d@e.4"]);
        assert!(h.lock().replay(&after_a, &room1).recovered);
        // Another history's position: everything kept, not recovered.
        let r = h.lock().replay("other.2", &room1);
        assert_eq!((r.recovered, r.frames.len()), (false, 2));
        assert_eq!(r.skip_through, 0);
        // A position this history never gave.
        assert!(!h.lock().replay("e.99", &room1).recovered);
    }

    #[test]
    fn a_clusters_positions_are_kept_as_given_and_a_hole_or_a_new_epoch_is_not_recovered() {
        let h = History::with_epoch(limits(10), "mine".into());
        let mut s = h.lock();
        s.restart("c", 4);
        assert_eq!(s.last_position(), "c.4");
        let at = Instant::now();
        s.keep_at(5, at, Tags::new(), Utf8Bytes::from("five"));
        s.keep_at(6, at, Tags::new(), Utf8Bytes::from("six"));
        let r = s.replay("c.4", &Tags::new());
        assert_eq!((r.recovered, r.frames.len()), (true, 2));
        // Before the restart: this copy does not know what came then.
        assert!(!s.replay("c.3", &Tags::new()).recovered);
        assert!(!s.replay("mine.0", &Tags::new()).recovered);
        // A hole (7 and 8 never came): resuming from before it is not recovered, after it is.
        s.keep_at(9, at, Tags::new(), Utf8Bytes::from("nine"));
        assert!(!s.replay("c.6", &Tags::new()).recovered);
        let r = s.replay("c.8", &Tags::new());
        assert_eq!(
            (r.recovered, r.frames),
            (true, vec![Utf8Bytes::from("nine")])
        );
        // A position from a node ahead of this one: nothing to replay, nothing missed, and
        // what this node delivers up to it is skipped; far ahead, it was never given.
        let r = s.replay("c.12", &Tags::new());
        assert_eq!((r.recovered, r.frames.len(), r.skip_through), (true, 0, 12));
        let r = s.replay("c.9000000", &Tags::new());
        assert_eq!((r.recovered, r.frames.len(), r.skip_through), (false, 3, 0));
        // The same for a page of GET /history: empty, whole, and the cursor kept.
        let page = s.page(Some("c.12"), &Tags::new(), 10);
        assert_eq!(
            (page.frames.len(), page.recovered, page.pos.as_str()),
            (0, true, "c.12")
        );
        // A new epoch: nothing of the old one is recovered.
        s.restart("d", 0);
        assert_eq!(s.epoch(), "d");
        assert!(!s.replay("c.9", &Tags::new()).recovered);
        assert!(s.replay("d.0", &Tags::new()).recovered);
    }

    #[test]
    fn bytes_and_age_bound_the_history() {
        let h = History::with_epoch(
            Limits {
                requests: 100,
                bytes: 20,
                ttl: Duration::from_secs(300),
            },
            "e".into(),
        );
        for i in 0..10 {
            route(&h, Tags::new(), &format!("{i}"));
        }
        let (count, bytes) = h.size();
        assert!(bytes <= 20 && count == 3, "{count} requests, {bytes} bytes");
        let h = History::with_epoch(
            Limits {
                requests: 100,
                bytes: 1000,
                ttl: Duration::ZERO,
            },
            "e".into(),
        );
        let start = h.lock().last_position();
        route(&h, Tags::new(), "old");
        let r = h.lock().replay(&start, &Tags::new());
        assert!(!r.recovered && r.frames.is_empty());
        assert_eq!(h.size(), (0, 0));
    }
}
