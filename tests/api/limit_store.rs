//! One contract suite drives every `LimitStore` implementation: the in-process counters and
//! the Redis ones (with a unique key prefix per test), over each of Redis's access patterns,
//! over TLS and on a Redis Cluster.

use std::{sync::Arc, time::Duration};

use latchkey::{
    limits::{
        BackoffPolicy, BackoffSchedule, GateOutcome, LimitStore, LoginGate, Rate,
        redis::RedisLimits,
    },
    store::{clock::now_ms, redis::RedisAccess},
};
use uuid::Uuid;

use crate::helpers::RedisKind;

fn redis_limits(kind: RedisKind, access: RedisAccess) -> Arc<dyn LimitStore> {
    let prefix = format!("latchkey-test:{}:", Uuid::new_v4().simple());
    Arc::new(RedisLimits::new(kind.client(access), &prefix))
}

crate::store_contract!(latchkey::limits::memory::MemoryLimits::new(), redis_limits =>
    hits_count_within_a_window_and_start_over_after_it,
    each_key_counts_apart,
    the_gate_charges_the_ip_then_the_account_then_reads_the_backoff,
    an_ip_over_its_limit_does_not_charge_the_account,
    failures_follow_the_schedule_and_a_reset_forgets_them,
);

fn schedule() -> BackoffSchedule {
    BackoffSchedule::new(&BackoffPolicy {
        free_failures: 1,
        base: Duration::from_secs(1),
        max: Duration::from_secs(4),
        memory: Duration::from_secs(60),
    })
}

/// The gate's keys: an account's counter and backoff share a hash tag (`{a}`), as the
/// limiter's keys do, so a Redis Cluster keeps them in one slot.
fn gate<'a>(ip: &'a str, account: &'a str, backoff: &'a str, limits: (u64, u64)) -> LoginGate<'a> {
    LoginGate {
        outer_key: ip,
        outer: Rate::per_secs(limits.0, 60),
        account_key: account,
        account: Rate::per_secs(limits.1, 60),
        backoff_key: backoff,
        now_ms: now_ms(),
    }
}

async fn hits_count_within_a_window_and_start_over_after_it(store: Arc<dyn LimitStore>) {
    let (first, left) = store.hit("k", 1_000).await.unwrap();
    assert_eq!(first, 1);
    assert!((1..=1_000).contains(&left), "{left} ms left of the window");
    assert_eq!(store.hit("k", 1_000).await.unwrap().0, 2);
    assert_eq!(store.hit("k", 1_000).await.unwrap().0, 3);
    // Poll past the window's end rather than sleep a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (count, _) = store.hit("k", 1_000).await.unwrap();
        if count == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the window never ended"
        );
    }
}

async fn each_key_counts_apart(store: Arc<dyn LimitStore>) {
    for _ in 0..3 {
        store.hit("a", 60_000).await.unwrap();
    }
    assert_eq!(store.hit("b", 60_000).await.unwrap().0, 1);
    assert_eq!(store.hit("a", 60_000).await.unwrap().0, 4);
}

async fn the_gate_charges_the_ip_then_the_account_then_reads_the_backoff(
    store: Arc<dyn LimitStore>,
) {
    let open = |failures_on_record| GateOutcome::Open { failures_on_record };
    let outcome = store
        .login_gate(&gate("ip", "acct:{a}", "bo:{a}", (10, 2)))
        .await;
    assert_eq!(outcome.unwrap(), open(false));
    // One failure is free: the gate stays open but knows there is something to forget.
    store
        .record_failure("bo:{a}", now_ms(), &schedule())
        .await
        .unwrap();
    let outcome = store
        .login_gate(&gate("ip", "acct:{a}", "bo:{a}", (10, 2)))
        .await;
    assert_eq!(outcome.unwrap(), open(true));
    // A third attempt is over the account's limit of 2.
    match store
        .login_gate(&gate("ip", "acct:{a}", "bo:{a}", (10, 2)))
        .await
        .unwrap()
    {
        GateOutcome::AccountLimited { reset_ms } => assert!(reset_ms <= 60_000),
        other => panic!("expected the account limit, got {other:?}"),
    }
    // A second failure costs the base delay: the gate says how long to wait.
    store
        .record_failure("bo:{a}", now_ms(), &schedule())
        .await
        .unwrap();
    match store
        .login_gate(&gate("ip2", "acct2:{a}", "bo:{a}", (10, 10)))
        .await
        .unwrap()
    {
        GateOutcome::BackingOff { wait_ms } => assert!((1..=1_000).contains(&wait_ms)),
        other => panic!("expected backoff, got {other:?}"),
    }
}

async fn an_ip_over_its_limit_does_not_charge_the_account(store: Arc<dyn LimitStore>) {
    for _ in 0..2 {
        store
            .login_gate(&gate("ip", "other:{a}", "bo:{a}", (2, 10)))
            .await
            .unwrap();
    }
    match store
        .login_gate(&gate("ip", "acct:{a}", "bo:{a}", (2, 10)))
        .await
        .unwrap()
    {
        GateOutcome::OuterLimited { reset_ms } => assert!(reset_ms <= 60_000),
        other => panic!("expected the IP limit, got {other:?}"),
    }
    // The refused attempt never reached the account's counter.
    assert_eq!(store.hit("acct:{a}", 60_000).await.unwrap().0, 1);
}

async fn failures_follow_the_schedule_and_a_reset_forgets_them(store: Arc<dyn LimitStore>) {
    let schedule = schedule();
    let mut delays = Vec::new();
    for _ in 0..5 {
        delays.push(
            store
                .record_failure("bo:{a}", now_ms(), &schedule)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        delays,
        [(1, 0), (2, 1_000), (3, 2_000), (4, 4_000), (5, 4_000)],
        "free, base, doubled, capped"
    );
    store.reset("bo:{a}").await.unwrap();
    assert_eq!(
        store
            .record_failure("bo:{a}", now_ms(), &schedule)
            .await
            .unwrap(),
        (1, 0)
    );
}
