//! The pub/sub hub: topics, their subscribers, per-topic history rings and event ids.
//!
//! Every published event gets an id `EPOCH-SEQ` (see [`EventId`]) and is encoded once, when it is
//! published, into an [`Event`] that history and every subscriber queue share by reference.
//!
//! Memory is bounded: each topic keeps its last `history` events, and there are at most
//! `max_topics` topics. A topic with subscribers is never evicted; when a new topic needs room the
//! one without subscribers that was used least recently goes, and the hub remembers the newest id
//! it held so that a client resuming past it learns that events were lost.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use slab::Slab;

use super::ConnId;
use super::{sse, ws};

/// The longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 128;
/// The longest event name, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 128;
/// What an event's encodings add to its data, topic and name, at most: the envelope's keys, the
/// id, the SSE fields, a WebSocket frame header and a sender id.
const ENCODING_OVERHEAD: usize = 256;

/// A published event's id: the hub's epoch and a sequence number that increases across topics.
/// Written `EPOCH-SEQ`, the epoch as eight hex digits and the sequence in decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Fixed for the life of the hub's history: a resume with another epoch cannot be complete.
    pub epoch: u32,
    /// Starts at 1 and increases by one for every event published on any topic.
    pub seq: u64,
}

impl EventId {
    /// Reads `EPOCH-SEQ`; `None` for anything else.
    pub fn parse(text: &str) -> Option<EventId> {
        let (epoch, seq) = text.trim().split_once('-')?;
        if epoch.is_empty() || epoch.len() > 8 || seq.is_empty() {
            return None;
        }
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(EventId {
            epoch: u32::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{}", self.epoch, self.seq)
    }
}

/// A published event. Each transport that carries it encodes it once, the first time it is
/// needed, and every connection of that transport shares those bytes.
#[derive(Debug)]
pub struct Event {
    /// Its id.
    pub id: EventId,
    /// The topic it was published on (empty for a broadcast to every WebSocket client).
    pub topic: Arc<str>,
    /// Its event name (`"message"` when none was given).
    pub name: Box<str>,
    /// When it was published, for delivery latency.
    pub published_at: Instant,
    /// The data, as JSON text.
    data: Box<str>,
    /// For a WebSocket broadcast: the sender's connection id.
    from: Option<Box<str>>,
    sse: OnceLock<Box<[u8]>>,
    ws: OnceLock<Box<[u8]>>,
}

impl Event {
    /// An event whose data is `data`, compact JSON text. `name` must be valid
    /// ([`valid_event_name`]). With `from`, it is a WebSocket broadcast from that connection.
    pub fn new(
        id: EventId,
        topic: Arc<str>,
        name: &str,
        data: &str,
        from: Option<&str>,
        published_at: Instant,
    ) -> Event {
        Event {
            id,
            topic,
            name: name.into(),
            published_at,
            data: data.into(),
            from: from.map(Into::into),
            sse: OnceLock::new(),
            ws: OnceLock::new(),
        }
    }

    /// The envelope clients see, `{"type":"event","topic":…,"event":…,"id":…,"data":…}`.
    pub fn envelope(&self) -> String {
        let mut out = String::with_capacity(64 + self.topic.len() + self.data.len());
        out.push_str(r#"{"type":"event","topic":"#);
        push_json_string(&mut out, &self.topic);
        out.push_str(r#","event":"#);
        push_json_string(&mut out, &self.name);
        out.push_str(r#","id":""#);
        out.push_str(&self.id.to_string());
        out.push_str(r#"","data":"#);
        out.push_str(&self.data);
        out.push('}');
        out
    }

    /// The complete SSE block (`id:`, `event:`, `data:` and the blank line).
    pub fn sse_bytes(&self) -> &[u8] {
        self.sse.get_or_init(|| {
            sse::event_block(&self.id.to_string(), &self.name, &self.envelope()).into_boxed_slice()
        })
    }

    /// The WebSocket text frame: the envelope, or for a broadcast
    /// `{"type":"broadcast","data":…,"from":…,"id":…}`.
    pub fn ws_frame(&self) -> &[u8] {
        self.ws.get_or_init(|| {
            let text = match &self.from {
                None => self.envelope(),
                Some(from) => {
                    let mut out = String::with_capacity(64 + self.data.len());
                    out.push_str(r#"{"type":"broadcast","data":"#);
                    out.push_str(&self.data);
                    out.push_str(r#","from":"#);
                    push_json_string(&mut out, from);
                    out.push_str(r#","id":""#);
                    out.push_str(&self.id.to_string());
                    out.push_str(r#""}"#);
                    out
                }
            };
            ws::text_frame(text.as_bytes()).into_boxed_slice()
        })
    }
}

/// The envelopes of `events` as one JSON array, written from their text (no parse).
pub fn envelopes_json(events: &[Arc<Event>]) -> String {
    let mut out = String::from("[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&event.envelope());
    }
    out.push(']');
    out
}

/// Appends `text` as a JSON string literal.
pub fn push_json_string(out: &mut String, text: &str) {
    out.push_str(&serde_json::Value::from(text).to_string());
}

/// Whether `name` is a topic name: 1 to 128 bytes of `[A-Za-z0-9_.:/-]`.
pub fn valid_topic(name: &str) -> bool {
    (1..=MAX_TOPIC_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
}

/// Whether `name` can be an event name: 1 to 128 bytes with no control characters (an SSE
/// `event:` line cannot hold a line break).
pub fn valid_event_name(name: &str) -> bool {
    (1..=MAX_EVENT_NAME_BYTES).contains(&name.len()) && !name.chars().any(char::is_control)
}

/// Why the hub refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubError {
    /// Not a topic name.
    InvalidTopic,
    /// Not an event name.
    InvalidEventName,
    /// Every one of `max_topics` topics has subscribers; nothing can be evicted.
    TooManyTopics,
    /// Its encoding would not fit in a subscriber's queue (`max_queue_bytes`).
    TooLarge,
}

impl HubError {
    /// A short reason for clients.
    pub fn reason(self) -> &'static str {
        match self {
            HubError::InvalidTopic => "invalid topic name: 1-128 bytes of [A-Za-z0-9_.:/-]",
            HubError::InvalidEventName => "invalid event name: 1-128 bytes, no control characters",
            HubError::TooManyTopics => "topic limit reached",
            HubError::TooLarge => "event too large: its encoding must fit in max_queue_bytes",
        }
    }
}

/// A subscription: the topic and the subscriber's key in it, for unsubscribing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscription {
    topic: usize,
    key: usize,
}

/// What a resume found: the events after the cursor, if all of them are still held.
#[derive(Debug)]
pub struct Replay {
    /// True when every event after the cursor on the asked topics is in `events`.
    pub complete: bool,
    /// The retained events after the cursor, in id order; empty when not complete.
    pub events: Vec<Arc<Event>>,
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    history: VecDeque<Arc<Event>>,
    /// The newest sequence number this topic has lost (0 for none).
    lost_through: u64,
    subscribers: Slab<ConnId>,
    /// Its key in `Hub::unwatched` while it has no subscribers.
    unwatched_key: Option<u64>,
}

/// Topics, their history and their subscribers.
#[derive(Debug)]
pub struct Hub {
    epoch: u32,
    last_seq: u64,
    history: usize,
    max_topics: usize,
    max_event_bytes: usize,
    topics: Slab<Topic>,
    by_name: HashMap<Arc<str>, usize>,
    /// Topics with no subscribers, oldest use first: the eviction order.
    unwatched: BTreeMap<u64, usize>,
    uses: u64,
    /// The newest sequence number held by any evicted topic (0 for none).
    evicted_through: u64,
}

impl Hub {
    /// A hub whose ids carry `epoch`, keeping `history` events per topic and at most `max_topics`
    /// topics, refusing events whose encoding could pass `max_event_bytes`.
    pub fn new(epoch: u32, history: usize, max_topics: usize, max_event_bytes: usize) -> Hub {
        Hub {
            epoch,
            last_seq: 0,
            history,
            max_topics: max_topics.max(1),
            max_event_bytes,
            topics: Slab::new(),
            by_name: HashMap::new(),
            unwatched: BTreeMap::new(),
            uses: 0,
            evicted_through: 0,
        }
    }

    /// The epoch of every id this hub gives.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// How many topics exist.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// How many events the topics' histories hold, over every topic.
    pub fn retained_events(&self) -> usize {
        self.topics.iter().map(|(_, t)| t.history.len()).sum()
    }

    /// The names of every topic, in no particular order.
    pub fn topic_names(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(|(_, t)| &*t.name)
    }

    /// Checks an event before it is published: its names, and that every encoding of it fits
    /// in a subscriber's queue. `data` is compact JSON text.
    pub fn check(&self, topic: &str, name: &str, data: &str) -> Result<(), HubError> {
        if !valid_topic(topic) {
            return Err(HubError::InvalidTopic);
        }
        if !valid_event_name(name) {
            return Err(HubError::InvalidEventName);
        }
        if data.len() + topic.len() + name.len() + ENCODING_OVERHEAD > self.max_event_bytes {
            return Err(HubError::TooLarge);
        }
        Ok(())
    }

    /// Publishes an event whose data is `data`, compact JSON text: gives it an id and keeps it
    /// in the topic's history. With `from`, it is a WebSocket broadcast to the topic's room from
    /// that connection, and `published_at` its time of publication (for delivery latency).
    /// Returns it with the topic's index for [`Hub::subscribers`].
    pub fn publish(
        &mut self,
        published_at: Instant,
        topic: &str,
        name: &str,
        data: &str,
        from: Option<&str>,
    ) -> Result<(Arc<Event>, usize), HubError> {
        self.check(topic, name, data)?;
        let index = self.topic_index(topic)?;
        let id = self.next_id();
        let t = &mut self.topics[index];
        let event = Arc::new(Event::new(
            id,
            t.name.clone(),
            name,
            data,
            from,
            published_at,
        ));
        if self.history == 0 {
            t.lost_through = id.seq;
        } else {
            if t.history.len() == self.history {
                if let Some(old) = t.history.pop_front() {
                    t.lost_through = old.id.seq;
                }
            }
            t.history.push_back(event.clone());
        }
        if t.unwatched_key.is_some() {
            self.touch_unwatched(index);
        }
        Ok((event, index))
    }

    /// Whether publishing on every one of `names` would find room for the topics it creates,
    /// without evicting any topic that is itself among `names`.
    pub fn has_room_for<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        let mut seen: HashSet<&str> = HashSet::new();
        let (mut new, mut pinned) = (0, 0);
        for name in names {
            if !seen.insert(name) {
                continue;
            }
            match self.by_name.get(name).map(|&i| &self.topics[i]) {
                None => new += 1,
                Some(t) if t.unwatched_key.is_some() => pinned += 1,
                Some(_) => {}
            }
        }
        let watched = self.topics.len() - self.unwatched.len();
        new == 0 || watched + pinned + new <= self.max_topics
    }

    /// A broadcast to every WebSocket client, outside any topic: it gets an id but no history.
    pub fn broadcast_to_all(
        &mut self,
        now: Instant,
        data: &str,
        from: &str,
    ) -> Result<Arc<Event>, HubError> {
        if data.len() + ENCODING_OVERHEAD > self.max_event_bytes {
            return Err(HubError::TooLarge);
        }
        let id = self.next_id();
        Ok(Arc::new(Event::new(
            id,
            "".into(),
            "broadcast",
            data,
            Some(from),
            now,
        )))
    }

    /// Marks the topics among `names` that exist as just used, so that making room for new
    /// topics published or subscribed to with them evicts others first.
    pub fn touch<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if let Some(&index) = self.by_name.get(name) {
                if self.topics[index].unwatched_key.is_some() {
                    self.touch_unwatched(index);
                }
            }
        }
    }

    fn next_id(&mut self) -> EventId {
        self.last_seq += 1;
        EventId {
            epoch: self.epoch,
            seq: self.last_seq,
        }
    }

    /// The subscribers of the topic at `index`.
    pub fn subscribers(&self, index: usize) -> impl Iterator<Item = ConnId> + '_ {
        self.topics
            .get(index)
            .into_iter()
            .flat_map(|t| t.subscribers.iter().map(|(_, c)| *c))
    }

    /// Subscribes `conn` to `topic`, creating the topic if needed.
    pub fn subscribe(&mut self, conn: ConnId, topic: &str) -> Result<Subscription, HubError> {
        let index = self.topic_index(topic)?;
        let t = &mut self.topics[index];
        let key = t.subscribers.insert(conn);
        if let Some(k) = t.unwatched_key.take() {
            self.unwatched.remove(&k);
        }
        Ok(Subscription { topic: index, key })
    }

    /// Ends a subscription. A topic left with neither subscribers nor history goes.
    pub fn unsubscribe(&mut self, sub: Subscription) {
        let Some(t) = self.topics.get_mut(sub.topic) else {
            return;
        };
        t.subscribers.try_remove(sub.key);
        if !t.subscribers.is_empty() {
            return;
        }
        if t.history.is_empty() && t.lost_through <= self.evicted_through {
            let t = self.topics.remove(sub.topic);
            self.by_name.remove(&t.name);
        } else {
            self.touch_unwatched(sub.topic);
        }
    }

    /// The events after `cursor` (an id as clients send it) on `subscriptions`' topics, if the
    /// hub still holds every one of them.
    pub fn replay(&self, subscriptions: &[Subscription], cursor: &str) -> Replay {
        let incomplete = Replay {
            complete: false,
            events: Vec::new(),
        };
        let Some(cursor) = EventId::parse(cursor) else {
            return incomplete;
        };
        if cursor.epoch != self.epoch || cursor.seq > self.last_seq {
            return incomplete;
        }
        let mut events = Vec::new();
        for sub in subscriptions {
            let Some(t) = self.topics.get(sub.topic) else {
                return incomplete;
            };
            if t.lost_through > cursor.seq {
                return incomplete;
            }
            let start = t.history.partition_point(|e| e.id.seq <= cursor.seq);
            events.extend(t.history.range(start..).cloned());
        }
        events.sort_unstable_by_key(|e| e.id.seq);
        Replay {
            complete: true,
            events,
        }
    }

    /// The retained events of `topic` after `since` (all when `None`), oldest first, at most
    /// `limit` of the newest.
    pub fn history(&self, topic: &str, since: Option<EventId>, limit: usize) -> Vec<Arc<Event>> {
        let Some(t) = self.by_name.get(topic).and_then(|&i| self.topics.get(i)) else {
            return Vec::new();
        };
        let after = since.filter(|s| s.epoch == self.epoch).map_or(0, |s| s.seq);
        let start = t.history.partition_point(|e| e.id.seq <= after);
        let start = start.max(t.history.len().saturating_sub(limit));
        t.history.range(start..).cloned().collect()
    }

    fn topic_index(&mut self, name: &str) -> Result<usize, HubError> {
        if let Some(&index) = self.by_name.get(name) {
            return Ok(index);
        }
        if !valid_topic(name) {
            return Err(HubError::InvalidTopic);
        }
        if self.topics.len() >= self.max_topics {
            let (_, victim) = self.unwatched.pop_first().ok_or(HubError::TooManyTopics)?;
            let t = self.topics.remove(victim);
            self.by_name.remove(&t.name);
            let newest = t.history.back().map_or(t.lost_through, |e| e.id.seq);
            self.evicted_through = self.evicted_through.max(newest);
        }
        let name: Arc<str> = name.into();
        let index = self.topics.insert(Topic {
            name: name.clone(),
            history: VecDeque::new(),
            // A topic made again after an eviction may have lost what the evicted one held.
            lost_through: self.evicted_through,
            subscribers: Slab::new(),
            unwatched_key: None,
        });
        self.by_name.insert(name, index);
        self.touch_unwatched(index);
        Ok(index)
    }

    /// Marks the topic at `index` (which has no subscribers) as used now.
    fn touch_unwatched(&mut self, index: usize) {
        if let Some(k) = self.topics[index].unwatched_key.take() {
            self.unwatched.remove(&k);
        }
        self.uses += 1;
        self.unwatched.insert(self.uses, index);
        self.topics[index].unwatched_key = Some(self.uses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conn(index: u32) -> ConnId {
        ConnId {
            index,
            generation: 1,
        }
    }

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = EventId {
            epoch: 0x5f3a9c1e,
            seq: 42,
        };
        assert_eq!(id.to_string(), "5f3a9c1e-42");
        assert_eq!(EventId::parse("5f3a9c1e-42"), Some(id));
        for bad in [
            "",
            "-",
            "5f3a9c1e-",
            "-42",
            "zz-1",
            "1-x",
            "1-+1",
            "123456789-1",
            "1-1-1",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn envelope_and_sse_block_are_encoded_once_as_the_contract_says() {
        let mut hub = Hub::new(0xab, 10, 10, 1 << 20);
        let (e, _) = hub
            .publish(
                Instant::now(),
                "news",
                "update",
                &json!({"any":"json"}).to_string(),
                None,
            )
            .unwrap();
        assert_eq!(
            e.envelope(),
            r#"{"type":"event","topic":"news","event":"update","id":"000000ab-1","data":{"any":"json"}}"#
        );
        let block = std::str::from_utf8(e.sse_bytes()).unwrap();
        assert_eq!(
            block,
            format!("id: 000000ab-1\nevent: update\ndata: {}\n\n", e.envelope())
        );
        let (m, _) = hub
            .publish(
                Instant::now(),
                "news",
                "message",
                &json!("a\nb").to_string(),
                None,
            )
            .unwrap();
        assert!(!std::str::from_utf8(m.sse_bytes())
            .unwrap()
            .contains("event:"));
        assert_eq!(m.sse_bytes().iter().filter(|&&b| b == b'\n').count(), 3);
    }

    #[test]
    fn websocket_frames_carry_the_envelope_or_the_broadcast() {
        let mut hub = Hub::new(0xab, 10, 10, 1 << 20);
        let now = Instant::now();
        let (e, _) = hub
            .publish(now, "r", "update", &json!({"b":1,"a":2}).to_string(), None)
            .unwrap();
        let frame = e.ws_frame();
        assert_eq!(&frame[..2], &[0x81, e.envelope().len() as u8]);
        assert_eq!(&frame[2..], e.envelope().as_bytes());
        // The publisher's key order is kept.
        assert!(e.envelope().ends_with(r#""data":{"b":1,"a":2}}"#));
        let (b, _) = hub
            .publish(now, "r", "broadcast", &json!("hi").to_string(), Some("7"))
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&b.ws_frame()[2..]).unwrap(),
            r#"{"type":"broadcast","data":"hi","from":"7","id":"000000ab-2"}"#
        );
        // SSE subscribers of the room see an ordinary event named broadcast.
        assert!(std::str::from_utf8(b.sse_bytes())
            .unwrap()
            .contains("event: broadcast\ndata: {\"type\":\"event\",\"topic\":\"r\""));
        let all = hub.broadcast_to_all(now, "null", "9").unwrap();
        assert_eq!(all.id.seq, 3);
        assert_eq!(hub.history("r", None, 10).len(), 2);
    }

    #[test]
    fn topic_and_event_names_are_checked() {
        let mut hub = Hub::new(1, 10, 10, 1 << 20);
        let now = Instant::now();
        for bad in ["", "a b", "naïve", "x\n", &"a".repeat(129)] {
            assert_eq!(
                hub.publish(now, bad, "message", &json!(1).to_string(), None)
                    .unwrap_err(),
                HubError::InvalidTopic
            );
        }
        assert!(hub
            .publish(now, "a:b/c.d-e_F9", "message", &json!(1).to_string(), None)
            .is_ok());
        assert!(hub
            .publish(
                now,
                &"a".repeat(128),
                "message",
                &json!(1).to_string(),
                None
            )
            .is_ok());
        assert_eq!(
            hub.publish(now, "ok", "a\nb", &json!(1).to_string(), None)
                .unwrap_err(),
            HubError::InvalidEventName
        );
    }

    #[test]
    fn replay_is_complete_only_while_history_holds_everything_after_the_cursor() {
        let mut hub = Hub::new(7, 3, 10, 1 << 20);
        let now = Instant::now();
        let a = hub.subscribe(conn(0), "a").unwrap();
        let b = hub.subscribe(conn(0), "b").unwrap();
        let mut ids = Vec::new();
        for topic in ["a", "b", "a", "b"] {
            ids.push(
                hub.publish(now, topic, "message", &json!(0).to_string(), None)
                    .unwrap()
                    .0
                    .id,
            );
        }
        let r = hub.replay(&[a, b], &ids[0].to_string());
        assert!(r.complete);
        let seqs: Vec<u64> = r.events.iter().map(|e| e.id.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        // Topic a keeps 3: publishing 3 more pushes event 1 and 3 out.
        for _ in 0..3 {
            hub.publish(now, "a", "message", &json!(0).to_string(), None)
                .unwrap();
        }
        assert!(!hub.replay(&[a], &ids[0].to_string()).complete);
        assert!(hub.replay(&[b], &ids[0].to_string()).complete);
        let r = hub.replay(&[a], &ids[2].to_string());
        assert!(r.complete);
        assert_eq!(r.events.len(), 3);
        // Another epoch, a future id, or garbage: incomplete and nothing pretended.
        for cursor in ["00000008-1", "00000007-999", "nope"] {
            let r = hub.replay(&[a, b], cursor);
            assert!(!r.complete && r.events.is_empty(), "{cursor}");
        }
    }

    #[test]
    fn eviction_takes_the_least_recently_used_unwatched_topic_and_is_remembered() {
        let mut hub = Hub::new(1, 5, 2, 1 << 20);
        let now = Instant::now();
        let watched = hub.subscribe(conn(1), "watched").unwrap();
        hub.publish(now, "old", "message", &json!(0).to_string(), None)
            .unwrap();
        // A third topic evicts "old" (the only one without subscribers).
        hub.publish(now, "new", "message", &json!(0).to_string(), None)
            .unwrap();
        assert_eq!(hub.topic_count(), 2);
        assert!(hub.history("old", None, 10).is_empty());
        // With both topics watched, nothing can make room.
        hub.subscribe(conn(2), "new").unwrap();
        let again = hub.subscribe(conn(2), "old");
        assert_eq!(again.unwrap_err(), HubError::TooManyTopics);
        // "watched" has no history and goes with its last subscriber, making room; a client
        // resuming on "old" from before its last event learns of the loss.
        hub.unsubscribe(watched);
        assert_eq!(hub.topic_count(), 1);
        let old = hub.subscribe(conn(2), "old").unwrap();
        assert!(!hub.replay(&[old], "00000001-0").complete);
        assert!(hub.replay(&[old], "00000001-2").complete);
    }

    #[test]
    fn room_for_new_topics_counts_what_could_be_evicted() {
        let mut hub = Hub::new(1, 5, 3, 1 << 20);
        let now = Instant::now();
        hub.subscribe(conn(1), "w").unwrap();
        hub.publish(now, "u", "message", &json!(0).to_string(), None)
            .unwrap();
        hub.publish(now, "v", "message", &json!(0).to_string(), None)
            .unwrap();
        // Full: "w" is watched, "u" and "v" can go.
        assert!(hub.has_room_for(["w", "u", "v"]));
        assert!(hub.has_room_for(["x", "y"]));
        assert!(hub.has_room_for(["x", "u"]));
        // Three new topics, or a new one that would push out the other it is published with.
        assert!(!hub.has_room_for(["x", "y", "z"]));
        assert!(!hub.has_room_for(["x", "u", "v"]));
        assert!(hub.has_room_for(["x", "x", "u"]));
    }

    #[test]
    fn a_topic_with_no_subscribers_and_no_history_is_removed() {
        let mut hub = Hub::new(1, 5, 10, 1 << 20);
        let s = hub.subscribe(conn(1), "t").unwrap();
        assert_eq!(hub.topic_count(), 1);
        assert_eq!(hub.subscribers(s.topic).collect::<Vec<_>>(), vec![conn(1)]);
        hub.unsubscribe(s);
        assert_eq!(hub.topic_count(), 0);
    }

    #[test]
    fn history_honours_since_and_limit() {
        let mut hub = Hub::new(1, 10, 10, 1 << 20);
        let now = Instant::now();
        let ids: Vec<_> = (0..5)
            .map(|i| {
                hub.publish(now, "t", "message", &json!(i).to_string(), None)
                    .unwrap()
                    .0
                    .id
            })
            .collect();
        let h = hub.history("t", Some(ids[1]), 10);
        assert_eq!(
            h.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let h = hub.history("t", None, 2);
        assert_eq!(h.iter().map(|e| e.id.seq).collect::<Vec<_>>(), vec![4, 5]);
    }
}
