//! `Cursor`: where a client is in the server's history (PROTOCOL.md §11), so that both SDKs
//! reopen a dropped connection with the right `since` and lose nothing.
//!
//! The rule that needs care: a connection opened with `since` gets the `position` frame (the
//! latest position on the server) first, then the replay, then `resumed`. Should it drop in the
//! middle of the replay, the next `since` must be the last replayed message's position, not
//! the `position` frame's, or the rest of the replay would be skipped. So on a resuming
//! connection the `position` frame's value is held until `resumed` ends the replay.
//!
//! A `tags` frame (PROTOCOL.md §13) moves the cursor too: requests before it were matched
//! against the old tags, so a client that reopens with its new tags must resume after it.

use crate::envelope::ServerFrame;

/// A client's place in the server's history: the position to pass as `since` when it reopens.
///
/// Feed it what the connection receives, in order; ask it for [`since`](Cursor::since) before
/// reopening, and tell it with [`opened`](Cursor::opened) whether that `since` was used.
///
/// ```
/// use tagcast::resume::Cursor;
///
/// let mut cursor = Cursor::new();
/// assert_eq!(cursor.since(), None);
/// cursor.opened(false);
/// cursor.position("e1.4"); // right after the handshake
/// cursor.message(Some("e1.5"));
/// assert_eq!(cursor.since(), Some("e1.5"));
///
/// // The connection dropped; it reopens with since=e1.5.
/// cursor.opened(true);
/// cursor.position("e1.9"); // the latest position on the server: held during the replay
/// cursor.message(Some("e1.7"));
/// assert_eq!(cursor.since(), Some("e1.7")); // a drop now resumes after e1.7, not e1.9
/// cursor.resumed();
/// assert_eq!(cursor.since(), Some("e1.9")); // everything up to e1.9 that matched is here
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Everything routed up to this position that matches the connection has been received.
    pos: Option<String>,
    /// Whether the current connection was opened with `since` and has not had `resumed` yet.
    replaying: bool,
    /// The `position` frame of a replaying connection, taken when the replay ends.
    held: Option<String>,
}

impl Cursor {
    /// A cursor with no position: the first connection opens without `since`.
    pub fn new() -> Self {
        Cursor::default()
    }

    /// The position to reopen with (`since`), when the client has one.
    pub fn since(&self) -> Option<&str> {
        self.pos.as_deref()
    }

    /// A connection opened; `resumed` says whether it was opened with [`since`](Cursor::since).
    pub fn opened(&mut self, resumed: bool) {
        self.replaying = resumed;
        self.held = None;
    }

    /// The `position` frame that opens a connection.
    pub fn position(&mut self, pos: &str) {
        if self.replaying {
            self.held = Some(pos.to_owned());
        } else {
            self.pos = Some(pos.to_owned());
        }
    }

    /// A delivered message (replayed or live) or a `tags` frame, with its position when the
    /// server sent one.
    pub fn message(&mut self, pos: Option<&str>) {
        if let Some(pos) = pos {
            self.pos = Some(pos.to_owned());
        }
    }

    /// The `resumed` frame: the replay is over.
    pub fn resumed(&mut self) {
        self.replaying = false;
        if let Some(pos) = self.held.take() {
            self.pos = Some(pos);
        }
    }

    /// Feeds a parsed frame: positions, messages and `resumed` move the cursor, others do not.
    pub fn observe(&mut self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Position { pos } => self.position(pos),
            ServerFrame::Message { pos, .. } | ServerFrame::Tags { pos, .. } => {
                self.message(pos.as_deref())
            }
            ServerFrame::Resumed { .. } => self.resumed(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_connection_takes_the_position_frame_at_once() {
        let mut cursor = Cursor::new();
        cursor.opened(false);
        cursor.observe(&ServerFrame::Position { pos: "a.0".into() });
        assert_eq!(cursor.since(), Some("a.0"));
        cursor.observe(&ServerFrame::Message {
            message: "m".into(),
            tags: Default::default(),
            pos: Some("a.3".into()),
        });
        assert_eq!(cursor.since(), Some("a.3"));
        // A message without a position (history off) leaves the cursor alone.
        cursor.message(None);
        assert_eq!(cursor.since(), Some("a.3"));
    }

    #[test]
    fn a_drop_during_the_replay_resumes_after_the_last_replayed_message() {
        let mut cursor = Cursor::new();
        cursor.opened(false);
        cursor.position("a.3");
        cursor.opened(true);
        cursor.position("a.9");
        assert_eq!(cursor.since(), Some("a.3"));
        cursor.message(Some("a.5"));
        // Dropped before `resumed`: reopen from a.5, and the held a.9 is forgotten.
        cursor.opened(true);
        assert_eq!(cursor.since(), Some("a.5"));
        cursor.position("a.10");
        cursor.message(Some("a.7"));
        cursor.observe(&ServerFrame::Resumed {
            recovered: true,
            missed: 1,
        });
        assert_eq!(cursor.since(), Some("a.10"));
        // Live messages after the replay move it on.
        cursor.message(Some("a.11"));
        assert_eq!(cursor.since(), Some("a.11"));
    }

    #[test]
    fn a_retag_moves_the_cursor() {
        let mut cursor = Cursor::new();
        cursor.opened(false);
        cursor.position("a.1");
        cursor.observe(&ServerFrame::Tags {
            id: None,
            tags: Default::default(),
            pos: Some("a.6".into()),
            token: None,
        });
        assert_eq!(cursor.since(), Some("a.6"));
    }

    #[test]
    fn a_new_history_replaces_the_old_position() {
        // A restarted server: a position of its new epoch, nothing replayed, not recovered.
        let mut cursor = Cursor::new();
        cursor.opened(false);
        cursor.position("old.4");
        cursor.opened(true);
        cursor.position("new.0");
        cursor.resumed();
        assert_eq!(cursor.since(), Some("new.0"));
    }
}
