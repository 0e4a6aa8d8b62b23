//! Notifications on their way out (alert webhooks): a bounded per-worker
//! queue, sent from the tick (the root context, which outlives requests),
//! retried with backoff, every outcome counted. Nothing here ever waits on
//! the request path: a receiver that is down costs a counter and a log line.

use super::ml::breaker::backoff_ms;
use super::ports::{Call, Callouts, Metric, MetricsSink};
use std::cell::RefCell;
use std::collections::VecDeque;

/// Posts held per worker; beyond it new ones are dropped and counted.
const CAPACITY: usize = 256;
/// And their bytes: linear memory never shrinks, so a receiver that is down
/// must not hold more than this per worker.
const MAX_BYTES: usize = 4 << 20;
/// Posts sent per tick.
const SENDS_PER_TICK: usize = 16;

/// What an outbox carries: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Alert webhooks.
    Webhook,
    /// Batches of security events to a SIEM collector.
    Collector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Sent,
    Retried,
    Failed,
    Dropped,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Sent, Outcome::Retried, Outcome::Failed, Outcome::Dropped];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Where posts go: an Envoy cluster, with `:authority` and `:path`.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    pub retries: u32,
    /// Extra request headers (a collector's token).
    pub headers: Vec<(String, String)>,
}

struct Post {
    target: usize,
    body: Vec<u8>,
    tries: u32,
    due_ms: u64,
    token: Option<u32>,
    sent_ms: u64,
}

pub struct Outbox {
    channel: Channel,
    targets: Vec<Target>,
    queue: RefCell<VecDeque<Post>>,
    bytes: std::cell::Cell<usize>,
}

impl Outbox {
    pub fn new(channel: Channel, targets: Vec<Target>) -> Self {
        Outbox { channel, targets, queue: RefCell::new(VecDeque::new()), bytes: std::cell::Cell::new(0) }
    }

    fn count(&self, metrics: &dyn MetricsSink, outcome: Outcome) {
        metrics.add(Metric::Outbox(self.channel, outcome), 1);
    }

    pub fn push(&self, target: usize, body: Vec<u8>, now_ms: u64, metrics: &dyn MetricsSink) {
        let mut q = self.queue.borrow_mut();
        if q.len() >= CAPACITY || self.bytes.get() + body.len() > MAX_BYTES {
            self.count(metrics, Outcome::Dropped);
            return;
        }
        self.bytes.set(self.bytes.get() + body.len());
        q.push_back(Post { target, body, tries: 0, due_ms: now_ms, token: None, sent_ms: 0 });
    }

    pub fn pending(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Sends what is due. Returns log lines (failures to send at all).
    pub fn on_tick(&self, now_ms: u64, callouts: &dyn Callouts, metrics: &dyn MetricsSink) -> Vec<String> {
        let mut log = Vec::new();
        let mut sends = 0;
        let mut freed = 0;
        self.queue.borrow_mut().retain_mut(|p| {
            let keep = self.tick_one(p, now_ms, callouts, metrics, &mut sends, &mut log);
            if !keep {
                freed += p.body.len();
            }
            keep
        });
        self.bytes.set(self.bytes.get().saturating_sub(freed));
        log
    }

    /// One post's turn in a tick: whether it stays queued.
    fn tick_one(
        &self,
        p: &mut Post,
        now_ms: u64,
        callouts: &dyn Callouts,
        metrics: &dyn MetricsSink,
        sends: &mut usize,
        log: &mut Vec<String>,
    ) -> bool {
        let Some(t) = self.targets.get(p.target) else { return false };
        if p.token.is_some() {
            // Envoy answers every call it sent (at the latest at its
            // timeout); this only keeps the bound should one be lost.
            if now_ms.saturating_sub(p.sent_ms) > t.timeout_ms + 10_000 {
                self.count(metrics, Outcome::Failed);
                return false;
            }
            return true;
        }
        if p.due_ms > now_ms || *sends >= SENDS_PER_TICK {
            return true;
        }
        *sends += 1;
        let call = Call {
            cluster: &t.cluster,
            authority: &t.authority,
            path: &t.path,
            request_id: "",
            body: &p.body,
            timeout_ms: t.timeout_ms,
            headers: &t.headers,
            feature_version: None,
        };
        match callouts.send(&call) {
            Ok(token) => {
                p.token = Some(token);
                p.tries += 1;
                p.sent_ms = now_ms;
                true
            }
            Err(status) => {
                self.count(metrics, Outcome::Failed);
                log.push(format!("{}: cannot send to cluster {} (status {status}); dropped", t.name, t.cluster));
                false
            }
        }
    }

    /// The reply to a post: done on 2xx, else retried with backoff, then
    /// given up. Returns `None` when the token is not one of ours, else the
    /// log lines worth writing.
    pub fn on_reply(&self, token: u32, status: Option<u16>, now_ms: u64, metrics: &dyn MetricsSink) -> Option<Vec<String>> {
        let mut q = self.queue.borrow_mut();
        let at = q.iter().position(|p| p.token == Some(token))?;
        let mut post = q.remove(at)?;
        self.bytes.set(self.bytes.get().saturating_sub(post.body.len()));
        let name = self.targets.get(post.target).map_or("?", |t| t.name.as_str());
        let retries = self.targets.get(post.target).map_or(0, |t| t.retries);
        if matches!(status, Some(200..=299)) {
            self.count(metrics, Outcome::Sent);
            return Some(Vec::new());
        }
        let what = status.map_or("no response".to_string(), |s| format!("status {s}"));
        if post.tries <= retries {
            self.count(metrics, Outcome::Retried);
            post.token = None;
            post.due_ms = now_ms + backoff_ms(post.tries, u64::from(token)).max(100);
            self.bytes.set(self.bytes.get() + post.body.len());
            q.push_back(post);
            return Some(Vec::new());
        }
        self.count(metrics, Outcome::Failed);
        Some(vec![format!("{name}: delivery failed after {} attempts ({what}); dropped", post.tries)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryCallouts, MemoryMetrics};

    fn outbox(retries: u32) -> Outbox {
        Outbox::new(
            Channel::Webhook,
            vec![Target {
                name: "webhook".into(),
                cluster: "alerts".into(),
                authority: "alerts".into(),
                path: "/hook".into(),
                timeout_ms: 500,
                retries,
                headers: Vec::new(),
            }],
        )
    }

    #[test]
    fn a_post_is_sent_from_the_tick_and_counted() {
        let (o, calls, metrics) = (outbox(2), MemoryCallouts::default(), MemoryMetrics::default());
        o.push(0, b"{}".to_vec(), 0, &metrics);
        assert_eq!(calls.count(), 0, "never from the request path");
        o.on_tick(100, &calls, &metrics);
        assert_eq!(calls.count(), 1);
        assert_eq!(o.on_reply(1, Some(204), 120, &metrics), Some(vec![]));
        assert_eq!(metrics.get(Metric::Outbox(Channel::Webhook, Outcome::Sent)), 1);
        assert_eq!(o.pending(), 0);
        assert_eq!(o.on_reply(1, Some(200), 130, &metrics), None, "a token answered once is forgotten");
    }

    #[test]
    fn a_receiver_that_is_down_is_retried_with_backoff_then_given_up() {
        let (o, calls, metrics) = (outbox(2), MemoryCallouts::default(), MemoryMetrics::default());
        o.push(0, b"{}".to_vec(), 0, &metrics);
        let mut now = 0;
        let mut log = Vec::new();
        for attempt in 1..=3u32 {
            while calls.count() < attempt as usize {
                now += 100;
                o.on_tick(now, &calls, &metrics);
                assert!(now < 10_000);
            }
            log = o.on_reply(calls.last_token(), None, now, &metrics).unwrap();
        }
        assert_eq!(metrics.get(Metric::Outbox(Channel::Webhook, Outcome::Retried)), 2);
        assert_eq!(metrics.get(Metric::Outbox(Channel::Webhook, Outcome::Failed)), 1);
        assert!(log[0].contains("delivery failed after 3 attempts (no response)"), "{log:?}");
        assert_eq!(o.pending(), 0);
    }

    #[test]
    fn the_queue_is_bounded_in_posts_and_in_bytes() {
        let (o, metrics) = (outbox(0), MemoryMetrics::default());
        for _ in 0..CAPACITY + 10 {
            o.push(0, b"{}".to_vec(), 0, &metrics);
        }
        assert_eq!(o.pending(), CAPACITY);
        assert_eq!(metrics.get(Metric::Outbox(Channel::Webhook, Outcome::Dropped)), 10);

        let (o, metrics, calls) = (outbox(0), MemoryMetrics::default(), MemoryCallouts::default());
        let big = vec![b'x'; 1 << 20];
        for _ in 0..6 {
            o.push(0, big.clone(), 0, &metrics);
        }
        assert_eq!(o.pending(), 4, "4 MiB at most");
        o.on_tick(100, &calls, &metrics);
        o.on_reply(1, Some(200), 110, &metrics);
        o.push(0, big.clone(), 120, &metrics);
        assert_eq!(o.pending(), 4, "a delivered post frees its bytes");
    }
}
