//! Task events to containerd, from one ordered queue.
//!
//! RPC handlers and the exit path only enqueue; one forwarder task publishes in order through
//! containerd's ttrpc Events.Forward, retrying while containerd is away (a restart must not lose
//! a TaskExit), so the order of `publish` calls is the order containerd sees.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use tokio::sync::{mpsc, oneshot};

const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a shim that is shutting down keeps trying to deliver its queued events. containerd
/// 1.7 and 2.x delete stopped tasks (and so end their shims) while they restart, and serve
/// their events endpoint only after that, which on a busy node can take tens of seconds: the
/// TaskExit queued while containerd was away must still reach it. RUSTSHIM_EVENT_FLUSH_SECS in
/// containerd's environment overrides the default.
const DEFAULT_FLUSH_WINDOW: Duration = Duration::from_secs(60);

pub fn flush_window() -> Duration {
    std::env::var("RUSTSHIM_EVENT_FLUSH_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_FLUSH_WINDOW, Duration::from_secs)
}
/// After this many failed attempts an event is dropped, so a containerd that never returns
/// cannot grow the queue forever (about 10 minutes at the capped backoff).
const MAX_ATTEMPTS: u32 = 120;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Create(ev::TaskCreate),
    Start(ev::TaskStart),
    Exit(ev::TaskExit),
    Delete(ev::TaskDelete),
    ExecAdded(ev::TaskExecAdded),
    ExecStarted(ev::TaskExecStarted),
    Paused(ev::TaskPaused),
    Resumed(ev::TaskResumed),
    Oom(ev::TaskOOM),
}

impl Event {
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => "/tasks/create",
            Event::Start(_) => "/tasks/start",
            Event::Exit(_) => "/tasks/exit",
            Event::Delete(_) => "/tasks/delete",
            Event::ExecAdded(_) => "/tasks/exec-added",
            Event::ExecStarted(_) => "/tasks/exec-started",
            Event::Paused(_) => "/tasks/paused",
            Event::Resumed(_) => "/tasks/resumed",
            Event::Oom(_) => "/tasks/oom",
        }
    }

    /// The payload as an Any with the bare type URL containerd 1.6 resolves (no
    /// `type.googleapis.com/` prefix, which 1.6 silently drops).
    pub fn to_any(&self) -> Any {
        let (name, value) = match self {
            Event::Create(m) => ("TaskCreate", m.write_to_bytes()),
            Event::Start(m) => ("TaskStart", m.write_to_bytes()),
            Event::Exit(m) => ("TaskExit", m.write_to_bytes()),
            Event::Delete(m) => ("TaskDelete", m.write_to_bytes()),
            Event::ExecAdded(m) => ("TaskExecAdded", m.write_to_bytes()),
            Event::ExecStarted(m) => ("TaskExecStarted", m.write_to_bytes()),
            Event::Paused(m) => ("TaskPaused", m.write_to_bytes()),
            Event::Resumed(m) => ("TaskResumed", m.write_to_bytes()),
            Event::Oom(m) => ("TaskOOM", m.write_to_bytes()),
        };
        let mut any = Any::new();
        any.type_url = format!("containerd.events.{name}");
        any.value = value.unwrap_or_default();
        any
    }
}

pub fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    MessageField::some(ts)
}

enum Msg {
    /// The event and when it happened: containerd orders and reports by the envelope's time,
    /// which must not be the time a retry finally got through.
    Event(Event, SystemTime),
    Flush(oneshot::Sender<()>),
}

/// Topics and times of the events queued and not yet delivered, oldest first: what a state
/// dump shows, and what keeps an idle shim from exiting.
type Pending = Arc<Mutex<VecDeque<(&'static str, SystemTime)>>>;

/// The sending side, cheap to clone; `publish` never blocks.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Msg>,
    pending: Pending,
}

impl Publisher {
    /// A publisher and the forwarder future to run (one per shim).
    pub fn new(
        ttrpc_address: String,
        namespace: String,
    ) -> (Publisher, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Pending::default();
        (Publisher { tx, pending: pending.clone() }, forward_loop(rx, ttrpc_address, namespace, pending))
    }

    /// A publisher whose events land in a channel, for tests of event order.
    #[cfg(test)]
    pub fn recording() -> (Publisher, mpsc::UnboundedReceiver<Event>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let pending = Pending::default();
        let delivered = pending.clone();
        std::thread::spawn(move || {
            while let Some(m) = rx.blocking_recv() {
                match m {
                    Msg::Event(e, _) => {
                        delivered.lock().unwrap().pop_front();
                        let _ = etx.send(e);
                    }
                    Msg::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        (Publisher { tx, pending }, erx)
    }

    pub fn publish(&self, event: Event) {
        log::debug!("event {}", event.topic());
        let now = SystemTime::now();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push_back((event.topic(), now));
        let _ = self.tx.send(Msg::Event(event, now));
    }

    /// The events queued and not yet delivered (or given up on), oldest first.
    pub fn pending(&self) -> Vec<(&'static str, SystemTime)> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    /// Wait until every event queued so far was forwarded (or dropped), at most `limit`.
    /// False if the limit passed first.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return true;
        }
        tokio::time::timeout(limit, rx).await.is_ok()
    }
}

async fn forward_loop(mut rx: mpsc::UnboundedReceiver<Msg>, address: String, namespace: String, pending: Pending) {
    let mut client: Option<EventsClient> = None;
    while let Some(msg) = rx.recv().await {
        let (event, at) = match msg {
            Msg::Event(e, at) => (e, at),
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut req = ForwardRequest::new();
        let mut env = Envelope::new();
        env.timestamp = timestamp(at);
        env.namespace = namespace.clone();
        env.topic = event.topic().to_string();
        env.event = MessageField::some(event.to_any());
        req.envelope = MessageField::some(env);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if client.is_none() {
                match ttrpc::asynchronous::Client::connect(&format!("unix://{address}")).await {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => log::debug!("connect {address}: {e}"),
                }
            }
            if let Some(c) = &client {
                let ctx = ttrpc::context::with_duration(FORWARD_TIMEOUT);
                match c.forward(ctx, &req).await {
                    Ok(_) => break,
                    Err(ttrpc::Error::RpcStatus(st)) if attempt >= 3 => {
                        // containerd answered and refused: retrying will not change its mind.
                        log::error!("containerd refused event {}: {}", event.topic(), st.message);
                        break;
                    }
                    Err(e) => {
                        log::warn!("publish {} (attempt {attempt}): {e}", event.topic());
                        client = None;
                    }
                }
            }
            if attempt >= MAX_ATTEMPTS {
                log::error!("dropping event {} after {attempt} attempts", event.topic());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(25)))).await;
        }
        pending.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
    use containerd_shim_protos::shim_async::{create_events, Events};

    use super::*;

    #[derive(Default)]
    struct Containerd {
        got: Mutex<Vec<Envelope>>,
    }

    #[async_trait]
    impl Events for Containerd {
        async fn forward(&self, _: &ttrpc::r#async::TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            self.got.lock().unwrap().push(req.envelope.unwrap());
            Ok(Empty::new())
        }
    }

    /// containerd restarting slowly: its events endpoint appears only after the shim has
    /// queued an exit and began shutting down. The event still arrives, with the time it
    /// happened, not the time it got through.
    #[tokio::test(flavor = "current_thread")]
    async fn events_queued_across_a_shutdown_reach_a_late_containerd() {
        let dir = std::env::temp_dir().join(format!("rs-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("containerd.sock.ttrpc");
        let _ = std::fs::remove_file(&sock);
        let (publisher, forwarder) = Publisher::new(sock.display().to_string(), "ns".into());
        tokio::spawn(forwarder);
        let happened = SystemTime::now();
        publisher.publish(Event::Exit(ev::TaskExit { container_id: "k1".into(), id: "k1".into(), exit_status: 3, ..Default::default() }));
        // the shim shuts down: it flushes while containerd is still away
        let flushing = tokio::spawn({
            let p = publisher.clone();
            async move { p.flush(Duration::from_secs(60)).await }
        });
        // containerd comes back only after a few failed attempts
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!flushing.is_finished(), "nothing to deliver to yet");
        let up = SystemTime::now();
        let containerd = Arc::new(Containerd::default());
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_events(containerd.clone()));
        server.start().await.unwrap();
        assert_eq!(publisher.pending().len(), 1, "queued and not delivered");
        assert!(flushing.await.unwrap(), "delivered within the window");
        assert!(publisher.pending().is_empty());
        let got = containerd.got.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic, "/tasks/exit");
        let ts = got[0].timestamp.as_ref().unwrap();
        let at = UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32);
        assert!(at >= happened - Duration::from_millis(1) && at < up, "stamped when it happened, not when sent");
        let _ = server.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
