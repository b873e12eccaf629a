//! The worker's session streams against a fake dispatcher served over real gRPC on loopback:
//! assignments in, batched reports out (and retried on the next session), logs published.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::*;

use super::{serve, Link, REPORT_BATCH};
use crate::worker::tests::{complete, new_test_task};
use crate::worker::{FakeExecutor, Worker};

#[path = "../../../tests/common/dispatcher.rs"]
mod dispatcher;
#[path = "../../../tests/common/poll.rs"]
mod poll;
use dispatcher::{serve_fake, FakeDispatcher};
use poll::assert_eventually;

/// Serves `d` on a loopback port; returns a link to it for session `session`.
async fn link_to(d: Arc<FakeDispatcher>, session: &str) -> Link {
    let (client, manager) = serve_fake(d).await;
    Link { client, session_id: session.into(), manager }
}

/// How long a condition may take to hold.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn reports_travel_in_batches_of_at_most_100() {
    let d = Arc::new(FakeDispatcher::default());
    let assignments = d.feed_assignments();
    let link = link_to(d.clone(), "s1").await;
    let worker = Worker::new(Arc::new(FakeExecutor::new("n1")));
    let w = worker.clone();
    tokio::spawn(async move { serve(&w, link).await });

    let tasks = (0..250).map(|i| new_test_task(&format!("t{i}"), "web:1", TaskState::Running));
    assignments.send(Ok(complete(tasks.collect()))).await.unwrap();
    assert_eventually("every task reported running", WAIT, || {
        (0..250)
            .all(|i| d.reported(&format!("t{i}")).last().map(|r| r.1) == Some(TaskState::Running))
    })
    .await;
    let calls = d.updates.lock().unwrap();
    assert!(calls.iter().all(|c| c.updates.len() <= REPORT_BATCH && c.session_id == "s1"));
    let total: usize = calls.iter().map(|c| c.updates.len()).sum();
    // 250 tasks × 5 states, collapsed to the latest per task within each batch.
    assert!(calls.len() <= 25, "{} calls for {total} updates", calls.len());
}

#[tokio::test]
async fn an_unsent_report_goes_out_on_the_next_session() {
    let d = Arc::new(FakeDispatcher::default());
    d.fail_updates.store(1, Ordering::SeqCst);
    let assignments = d.feed_assignments();
    let worker = Worker::new(Arc::new(FakeExecutor::new("n1")));
    let first = link_to(d.clone(), "s1").await;
    let feed =
        assignments.send(Ok(complete(vec![new_test_task("a", "web:1", TaskState::Running)])));
    let (ended, _) = tokio::join!(serve(&worker, first), feed);
    assert!(ended.unwrap_err().to_string().contains("the leader is gone"));
    assert!(d.reported("a").is_empty());

    let second = link_to(d.clone(), "s2").await;
    let w = worker.clone();
    tokio::spawn(async move { serve(&w, second).await });
    assert_eventually("the state reported on the new session", WAIT, || {
        d.reported("a").last() == Some(&("s2".to_string(), TaskState::Running))
    })
    .await;
}

#[tokio::test]
async fn logs_are_published_then_followed_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let d = Arc::new(FakeDispatcher::default());
    let assignments = d.feed_assignments();
    let subs = d.feed_subscriptions();
    let link = link_to(d.clone(), "s1").await;
    let fake = Arc::new(FakeExecutor::new("n1").with_logs(dir.path()));
    let worker = Worker::new(fake);
    let w = worker.clone();
    tokio::spawn(async move { serve(&w, link).await });
    assignments
        .send(Ok(complete(vec![new_test_task("a", "web:1", TaskState::Running)])))
        .await
        .unwrap();
    assert_eventually("running", WAIT, || {
        d.reported("a").last().map(|r| r.1) == Some(TaskState::Running)
    })
    .await;

    let once =
        LogSubscription { id: "once".into(), task_ids: vec!["a".into()], ..Default::default() };
    subs.send(Ok(once)).await.unwrap();
    assert_eventually("the existing line, then the end marker", WAIT, || {
        let p = d.published.lock().unwrap();
        p.iter().any(|(_, m)| m.subscription_id == "once" && m.messages.is_empty())
    })
    .await;
    assert_eq!(d.lines(), vec!["task a running on n1 (fake)"]);

    let follow = LogSubscription {
        id: "follow".into(),
        task_ids: vec!["a".into()],
        follow: true,
        tail: 1,
        close: false,
    };
    subs.send(Ok(follow)).await.unwrap();
    assert_eventually("the tail", WAIT, || d.lines().len() == 2).await;
    std::fs::write(dir.path().join("a/stderr.log"), "late trouble\n").unwrap();
    assert_eventually("a new line", WAIT, || d.lines().len() == 3).await;
    let last = d.published.lock().unwrap().last().unwrap().1.messages[0].clone();
    assert_eq!(
        (last.stream, last.data.as_slice(), last.task_id.as_str()),
        (2, &b"late trouble"[..], "a")
    );
    let close = LogSubscription { id: "follow".into(), close: true, ..Default::default() };
    subs.send(Ok(close)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(dir.path().join("a/stderr.log"), "late trouble\nafter close\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.lines().len(), 3, "nothing after close");
}
