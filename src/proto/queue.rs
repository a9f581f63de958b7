//! Byte-bounded write queues: what a connection has yet to send, and the slow-consumer policy.
//!
//! A queue holds a list of chunks. Published events are event chunks: a reference to the one
//! encoding every subscriber shares, never a copy. Bytes made for one connection (response heads,
//! control events) are owned chunks and are never dropped. The queue counts the bytes it holds and
//! refuses to grow past its bound: the caller decides, by policy, whether that disconnects the
//! client or drops the oldest queued events (see [`WriteQueue::push_event`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

use super::hub::Event;

/// What to do with a subscriber whose queue would pass its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Close the connection.
    Disconnect,
    /// Drop the oldest queued events to make room, and tell the client how many it lost.
    DropOldest,
}

/// Which shared encoding of an event a connection sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The SSE block.
    Sse,
    /// The WebSocket text frame.
    WebSocket,
}

/// How an event came to be queued: for delivery latency, which counts live events only (a
/// replayed event waited in history, not in the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Queued as it was published.
    Live,
    /// Queued from history, for a resume or a join with `since`.
    Replay,
}

/// One piece of pending output.
#[derive(Debug)]
enum Chunk {
    /// Bytes for this connection alone; never dropped.
    Owned(Box<[u8]>),
    /// Bytes that live for the whole program (heartbeats); never dropped.
    Static(&'static [u8]),
    /// A published event in its shared encoding; may be dropped by [`Policy::DropOldest`].
    Event(Arc<Event>, Encoding, Origin),
    /// A notice that `count` events were dropped, in its encoding; merged into the next notice
    /// if it is itself overtaken by more drops before it leaves.
    Dropped { count: u64, bytes: Box<[u8]> },
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(b) => b,
            Chunk::Static(b) => b,
            Chunk::Event(e, Encoding::Sse, _) => e.sse_bytes(),
            Chunk::Event(e, Encoding::WebSocket, _) => e.ws_frame(),
            Chunk::Dropped { bytes, .. } => bytes,
        }
    }
}

/// Why an event could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The policy is [`Policy::Disconnect`] and the event does not fit: close the connection.
    Disconnect,
}

/// A connection's pending output, bounded in bytes.
#[derive(Debug, Default)]
pub struct WriteQueue {
    chunks: VecDeque<Chunk>,
    /// How much of the front chunk has been written already.
    head_offset: usize,
    /// Bytes not yet written, over all chunks.
    len: usize,
}

impl WriteQueue {
    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues bytes made for this connection alone. These are never dropped and not bounded
    /// here: the caller bounds what it makes (one response at a time, capped bodies).
    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks
            .push_back(Chunk::Owned(bytes.into_boxed_slice()));
    }

    /// Queues static bytes (a heartbeat).
    pub fn push_static(&mut self, bytes: &'static [u8]) {
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Static(bytes));
    }

    /// Queues a published event, which came from `origin`, within `limit` bytes.
    ///
    /// When it does not fit: with [`Policy::Disconnect`] nothing is queued and
    /// `Err(Overflow::Disconnect)` tells the caller to close the connection. With
    /// [`Policy::DropOldest`] the oldest queued events that have not started to leave are dropped
    /// until it fits (the new event itself when even that is not enough), and a notice made by
    /// `notice(count)` takes the place of the first one dropped, so the client learns of the gap
    /// before the next event it gets. Returns how many events this call dropped (the events of a
    /// notice it merges were counted by the call that dropped them).
    pub fn push_event(
        &mut self,
        event: Arc<Event>,
        encoding: Encoding,
        origin: Origin,
        limit: usize,
        policy: Policy,
        notice: impl Fn(u64) -> Vec<u8>,
    ) -> Result<u64, Overflow> {
        let chunk = Chunk::Event(event, encoding, origin);
        let size = chunk.bytes().len();
        if self.len + size <= limit {
            self.len += size;
            self.chunks.push_back(chunk);
            return Ok(0);
        }
        if policy == Policy::Disconnect {
            return Err(Overflow::Disconnect);
        }
        // Room for the notice too; its length is at most that of the largest count.
        let room_needed = size + notice(u64::MAX).len();
        // Events dropped now, and those of notices overtaken (counted when they were dropped).
        let (mut dropped, mut merged) = (0u64, 0u64);
        let mut gap = None;
        // The front chunk may have started to leave: it stays whole.
        let mut i = usize::from(self.head_offset > 0);
        while self.len + room_needed > limit && i < self.chunks.len() {
            match self.chunks[i] {
                Chunk::Event(..) => dropped += 1,
                Chunk::Dropped { count, .. } => merged += count,
                Chunk::Owned(_) | Chunk::Static(_) => {
                    i += 1;
                    continue;
                }
            }
            if let Some(chunk) = self.chunks.remove(i) {
                self.len -= chunk.bytes().len();
            }
            gap.get_or_insert(i);
        }
        let fits = self.len + room_needed <= limit;
        if !fits {
            dropped += 1;
        }
        if dropped + merged > 0 {
            let count = dropped + merged;
            let bytes = notice(count).into_boxed_slice();
            self.len += bytes.len();
            let at = gap.unwrap_or(self.chunks.len());
            self.chunks.insert(at, Chunk::Dropped { count, bytes });
        }
        if fits {
            self.len += size;
            self.chunks.push_back(chunk);
        }
        Ok(dropped)
    }

    /// Fills `out` with slices of the pending bytes, in order, and returns how many it filled.
    pub fn fill_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if n == out.len() {
                break;
            }
            let bytes = chunk.bytes();
            let bytes = if i == 0 {
                &bytes[self.head_offset..]
            } else {
                bytes
            };
            out[n] = IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// Marks `written` bytes as sent. Calls `on_event` with every event whose last byte went
    /// out, and where it came from.
    pub fn consume(&mut self, mut written: usize, mut on_event: impl FnMut(&Event, Origin)) {
        written = written.min(self.len);
        self.len -= written;
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_offset;
            if written < left {
                self.head_offset += written;
                break;
            }
            written -= left;
            self.head_offset = 0;
            if let Some(Chunk::Event(event, _, origin)) = self.chunks.pop_front() {
                on_event(&event, origin);
            }
        }
        if self.chunks.is_empty() {
            // An idle connection keeps no queue memory.
            self.chunks = VecDeque::new();
        }
    }

    /// Forgets everything queued except the chunk that has started to leave, which must be
    /// finished for what follows (a close frame) to be understood.
    pub fn truncate_to_started(&mut self) {
        let keep = usize::from(self.head_offset > 0);
        while self.chunks.len() > keep {
            if let Some(chunk) = self.chunks.pop_back() {
                self.len -= chunk.bytes().len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::hub::{Event, EventId};
    use std::time::Instant;

    fn event(seq: u64, payload: &str) -> Arc<Event> {
        Arc::new(Event::new(
            EventId { epoch: 1, seq },
            "t".into(),
            "message",
            &serde_json::Value::String(payload.into()).to_string(),
            None,
            Instant::now(),
        ))
    }

    fn drain(q: &mut WriteQueue) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); 4];
            let n = q.fill_slices(&mut slices);
            if n == 0 {
                break;
            }
            let first = slices[0].to_vec();
            out.extend_from_slice(&first);
            q.consume(first.len(), |_, _| {});
        }
        out
    }

    fn notice(n: u64) -> Vec<u8> {
        format!("[dropped {n}]").into_bytes()
    }

    #[test]
    fn disconnect_policy_refuses_what_does_not_fit() {
        let mut q = WriteQueue::default();
        let e = event(1, "x");
        let size = e.sse_bytes().len();
        assert_eq!(
            q.push_event(
                e,
                Encoding::Sse,
                Origin::Live,
                size,
                Policy::Disconnect,
                notice
            ),
            Ok(0)
        );
        assert_eq!(
            q.push_event(
                event(2, "x"),
                Encoding::Sse,
                Origin::Live,
                size,
                Policy::Disconnect,
                notice
            ),
            Err(Overflow::Disconnect)
        );
        assert_eq!(q.len(), size);
    }

    #[test]
    fn drop_oldest_puts_the_notice_where_the_gap_is() {
        let mut q = WriteQueue::default();
        q.push_owned(b"HEAD".to_vec());
        let size = event(1, "aaaa").sse_bytes().len();
        let limit = 4 + 3 * size + notice(u64::MAX).len();
        for seq in 1..=3 {
            assert_eq!(
                q.push_event(
                    event(seq, "aaaa"),
                    Encoding::Sse,
                    Origin::Live,
                    limit,
                    Policy::DropOldest,
                    notice
                ),
                Ok(0)
            );
        }
        // The fourth pushes out the first (and makes room for the notice), then the fifth
        // pushes out the second: one dropped each time, and one notice of 2, standing where
        // event 1 stood.
        assert_eq!(
            q.push_event(
                event(4, "aaaa"),
                Encoding::Sse,
                Origin::Live,
                limit,
                Policy::DropOldest,
                notice
            ),
            Ok(1)
        );
        assert_eq!(
            q.push_event(
                event(5, "aaaa"),
                Encoding::Sse,
                Origin::Live,
                limit,
                Policy::DropOldest,
                notice
            ),
            Ok(1)
        );
        assert!(q.len() <= limit);
        let text = String::from_utf8(drain(&mut q)).unwrap();
        assert!(
            text.starts_with("HEAD[dropped 2]id: 00000001-3\n"),
            "{text}"
        );
        assert!(text.contains("00000001-4") && text.contains("00000001-5"));
        assert!(!text.contains("00000001-1\n") && !text.contains("00000001-2\n"));
    }

    #[test]
    fn a_started_chunk_is_never_dropped() {
        let mut q = WriteQueue::default();
        let size = event(1, "aaaa").sse_bytes().len();
        let limit = size + notice(u64::MAX).len() + 1;
        q.push_event(
            event(1, "aaaa"),
            Encoding::Sse,
            Origin::Live,
            limit,
            Policy::DropOldest,
            notice,
        )
        .unwrap();
        q.consume(3, |_, _| {});
        // Nothing else can be dropped, so the new event itself is counted as lost.
        assert_eq!(
            q.push_event(
                event(2, "aaaa"),
                Encoding::Sse,
                Origin::Live,
                limit,
                Policy::DropOldest,
                notice
            ),
            Ok(1)
        );
        let text = String::from_utf8(drain(&mut q)).unwrap();
        assert!(text.ends_with("[dropped 1]"), "{text}");
        assert!(text.starts_with(" 00000001-1\n"), "{text}");
    }

    #[test]
    fn consume_reports_finished_events_and_frees_memory() {
        let mut q = WriteQueue::default();
        q.push_static(b": ping\n\n");
        q.push_event(
            event(7, "z"),
            Encoding::Sse,
            Origin::Replay,
            1 << 20,
            Policy::Disconnect,
            notice,
        )
        .unwrap();
        let total = q.len();
        let mut done = Vec::new();
        q.consume(total - 1, |e, origin| done.push((e.id.seq, origin)));
        assert!(done.is_empty());
        q.consume(1, |e, origin| done.push((e.id.seq, origin)));
        assert_eq!(done, vec![(7, Origin::Replay)]);
        assert!(q.is_empty());
        assert_eq!(q.chunks.capacity(), 0);
    }
}
