use super::*;
use crate::platform::AgentHandle;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A platform whose agents are flags: running until stopped (or "crashed").
#[derive(Debug, Default)]
struct FakePlatform {
    started: AtomicUsize,
    stopped: Arc<AtomicUsize>,
    last_alive: Mutex<Option<Arc<AtomicBool>>>,
    /// Agents running now, and the most ever at once.
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    /// How long stopping takes.
    stop_delay: std::time::Duration,
}

#[derive(Debug)]
struct FakeAgent {
    alive: Arc<AtomicBool>,
    stopped: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    delay: std::time::Duration,
}

impl AgentHandle for FakeAgent {
    fn is_running(&mut self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.alive.store(false, Ordering::SeqCst);
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.stopped.fetch_add(1, Ordering::SeqCst);
        })
    }
}

impl Platform for FakePlatform {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn resolve(&self, target: &str) -> Result<ResolvedTarget> {
        Ok(ResolvedTarget {
            name: target.to_owned(),
        })
    }
    fn start_agent(&self, _: &ResolvedTarget) -> BoxFuture<'static, Result<StartedAgent>> {
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        let alive = Arc::new(AtomicBool::new(true));
        *self.last_alive.lock().unwrap() = Some(alive.clone());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let handle = Box::new(FakeAgent {
            alive,
            stopped: self.stopped.clone(),
            running: self.running.clone(),
            delay: self.stop_delay,
        });
        Box::pin(async move {
            Ok(StartedAgent {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + n as u16)),
                token: SessionToken(format!("t{n}")),
                handle,
            })
        })
    }
    fn dial(&self, _: &str, program: &str) -> std::process::Command {
        std::process::Command::new(program)
    }
}

fn target(name: &str) -> ResolvedTarget {
    ResolvedTarget { name: name.into() }
}

#[tokio::test]
async fn sessions_of_one_target_share_one_agent_until_the_last_leaves() {
    let platform = Arc::new(FakePlatform::default());
    let pool = AgentPool::new(platform.clone());
    let a = pool.acquire(&target("pid/1"), false).await.unwrap();
    let b = pool.acquire(&target("pid/1"), false).await.unwrap();
    assert_eq!(a.addr, b.addr);
    assert_eq!(platform.started.load(Ordering::SeqCst), 1);
    let other = pool.acquire(&target("pid/2"), false).await.unwrap();
    assert_ne!(other.addr, a.addr);
    assert_eq!(platform.started.load(Ordering::SeqCst), 2);

    a.release().await;
    assert!(pool.has_agent("pid/1").await);
    assert_eq!(platform.stopped.load(Ordering::SeqCst), 0);
    b.release().await;
    assert!(!pool.has_agent("pid/1").await);
    assert_eq!(platform.stopped.load(Ordering::SeqCst), 1);

    // The next session starts a fresh agent.
    let c = pool.acquire(&target("pid/1"), false).await.unwrap();
    assert_eq!(platform.started.load(Ordering::SeqCst), 3);
    c.release().await;
    other.release().await;
}

#[tokio::test]
async fn a_dead_agent_is_replaced_on_the_next_acquire() {
    let platform = Arc::new(FakePlatform::default());
    let pool = AgentPool::new(platform.clone());
    let a = pool.acquire(&target("pid/1"), false).await.unwrap();
    platform
        .last_alive
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .store(false, Ordering::SeqCst);
    let b = pool.acquire(&target("pid/1"), false).await.unwrap();
    assert_ne!(a.addr, b.addr);
    assert_eq!(platform.started.load(Ordering::SeqCst), 2);
    drop(a);
    b.release().await;
}

#[tokio::test]
async fn a_dropped_lease_is_released_in_the_background() {
    let platform = Arc::new(FakePlatform::default());
    let pool = AgentPool::new(platform.clone());
    drop(pool.acquire(&target("pid/1"), false).await.unwrap());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while platform.stopped.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_session_arriving_while_the_agent_stops_gets_a_fresh_one_after_it() {
    let platform = Arc::new(FakePlatform {
        stop_delay: std::time::Duration::from_millis(200),
        ..FakePlatform::default()
    });
    let pool = AgentPool::new(platform.clone());
    let first = pool.acquire(&target("pid/1"), false).await.unwrap();
    let stopping = tokio::spawn(first.release());
    // Let the release take the slot and start stopping.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let second = pool.acquire(&target("pid/1"), false).await.unwrap();
    stopping.await.unwrap();
    assert_eq!(platform.started.load(Ordering::SeqCst), 2, "a fresh agent");
    assert_eq!(platform.stopped.load(Ordering::SeqCst), 1);
    assert_eq!(
        platform.most.load(Ordering::SeqCst),
        1,
        "never two agents for one target"
    );
    assert!(pool.has_agent("pid/1").await);
    second.release().await;
}
