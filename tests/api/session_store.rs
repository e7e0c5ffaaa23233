//! One contract suite drives every `SessionStore` implementation: the in-process store and the
//! Redis store (with a unique key prefix per test), over each of its two access patterns, over
//! TLS and on a Redis Cluster.

use std::sync::Arc;

use latchkey::{
    session::{NewSession, RotateOutcome, Rotation, SessionStore, redis::RedisStore},
    store::redis::RedisAccess,
};
use uuid::Uuid;

use crate::helpers::RedisKind;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn redis_store(kind: RedisKind, access: RedisAccess) -> Arc<dyn SessionStore> {
    let prefix = format!("latchkey-test:{}:", Uuid::new_v4().simple());
    Arc::new(RedisStore::new(kind.client(access), &prefix))
}

crate::store_contract!(latchkey::session::memory::MemoryStore::new(), redis_store =>
    a_created_session_accepts_its_access_jti_only,
    rotation_replaces_both_jtis,
    presenting_a_rotated_away_refresh_jti_revokes_the_session,
    revoke_removes_one_session_and_only_for_its_owner,
    revoke_all_removes_every_session_of_one_user,
    expired_tokens_and_sessions_are_gone,
    list_shows_live_sessions_newest_first,
    rotating_an_unknown_session_is_unknown,
    the_last_rotated_away_jti_gets_the_same_payload_within_the_grace_window,
    grace_ends_with_its_window,
    revoke_all_can_keep_one_session,
    a_use_is_recorded_in_last_used_at_and_never_revives_a_revoked_session,
);

fn new_session(user_id: Uuid, access_ttl: i64, refresh_ttl: i64) -> NewSession {
    let now = now();
    NewSession {
        id: Uuid::new_v4(),
        user_id,
        user_agent: Some("test-agent/1.0".into()),
        ip: Some("203.0.113.7".into()),
        created_at: now,
        access_jti: Uuid::new_v4(),
        access_exp: now + access_ttl,
        refresh_jti: Uuid::new_v4(),
        refresh_exp: now + refresh_ttl,
    }
}

fn rotation(s: &NewSession, presented: Uuid) -> Rotation {
    let now = now();
    Rotation {
        grace_secs: 0,
        grace_payload: String::new(),
        user_id: s.user_id,
        session_id: s.id,
        presented_refresh_jti: presented,
        new_access_jti: Uuid::new_v4(),
        new_access_exp: now + 900,
        new_refresh_jti: Uuid::new_v4(),
        new_refresh_exp: now + 3600,
        now,
    }
}

async fn a_created_session_accepts_its_access_jti_only(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), 900, 3600);
    store.create(s.clone()).await.unwrap();
    assert!(
        store
            .is_access_active(s.user_id, s.id, s.access_jti)
            .await
            .unwrap()
    );
    // The refresh jti is not an access jti; other ids do not match.
    assert!(
        !store
            .is_access_active(s.user_id, s.id, s.refresh_jti)
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_access_active(s.user_id, s.id, Uuid::new_v4())
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_access_active(Uuid::new_v4(), s.id, s.access_jti)
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_access_active(s.user_id, Uuid::new_v4(), s.access_jti)
            .await
            .unwrap()
    );
}

async fn rotation_replaces_both_jtis(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), 900, 3600);
    store.create(s.clone()).await.unwrap();
    let r = rotation(&s, s.refresh_jti);
    assert_eq!(
        store.rotate(r.clone()).await.unwrap(),
        RotateOutcome::Rotated
    );
    assert!(
        !store
            .is_access_active(s.user_id, s.id, s.access_jti)
            .await
            .unwrap()
    );
    assert!(
        store
            .is_access_active(s.user_id, s.id, r.new_access_jti)
            .await
            .unwrap()
    );
    // The new refresh jti rotates again.
    let r2 = Rotation {
        presented_refresh_jti: r.new_refresh_jti,
        ..rotation(&s, r.new_refresh_jti)
    };
    assert_eq!(
        store.rotate(r2.clone()).await.unwrap(),
        RotateOutcome::Rotated
    );
    assert!(
        store
            .is_access_active(s.user_id, s.id, r2.new_access_jti)
            .await
            .unwrap()
    );
}

async fn presenting_a_rotated_away_refresh_jti_revokes_the_session(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), 900, 3600);
    store.create(s.clone()).await.unwrap();
    let r = rotation(&s, s.refresh_jti);
    assert_eq!(
        store.rotate(r.clone()).await.unwrap(),
        RotateOutcome::Rotated
    );
    assert_eq!(
        store.rotate(rotation(&s, s.refresh_jti)).await.unwrap(),
        RotateOutcome::Reused
    );
    assert!(
        !store
            .is_access_active(s.user_id, s.id, r.new_access_jti)
            .await
            .unwrap()
    );
    assert_eq!(
        store.rotate(rotation(&s, r.new_refresh_jti)).await.unwrap(),
        RotateOutcome::Unknown
    );
    assert!(store.list(s.user_id).await.unwrap().is_empty());
}

async fn revoke_removes_one_session_and_only_for_its_owner(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let a = new_session(user, 900, 3600);
    let b = new_session(user, 900, 3600);
    store.create(a.clone()).await.unwrap();
    store.create(b.clone()).await.unwrap();
    // Another user cannot revoke it.
    assert!(!store.revoke(Uuid::new_v4(), a.id).await.unwrap());
    assert!(
        store
            .is_access_active(user, a.id, a.access_jti)
            .await
            .unwrap()
    );
    assert!(store.revoke(user, a.id).await.unwrap());
    assert!(
        !store
            .is_access_active(user, a.id, a.access_jti)
            .await
            .unwrap()
    );
    assert_eq!(
        store.rotate(rotation(&a, a.refresh_jti)).await.unwrap(),
        RotateOutcome::Unknown
    );
    assert!(
        store
            .is_access_active(user, b.id, b.access_jti)
            .await
            .unwrap()
    );
    assert!(
        !store.revoke(user, a.id).await.unwrap(),
        "second revoke finds nothing"
    );
}

async fn revoke_all_removes_every_session_of_one_user(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let other = new_session(Uuid::new_v4(), 900, 3600);
    store.create(other.clone()).await.unwrap();
    let sessions: Vec<NewSession> = (0..3).map(|_| new_session(user, 900, 3600)).collect();
    for s in &sessions {
        store.create(s.clone()).await.unwrap();
    }
    assert_eq!(store.revoke_all(user, None).await.unwrap(), 3);
    for s in &sessions {
        assert!(
            !store
                .is_access_active(user, s.id, s.access_jti)
                .await
                .unwrap()
        );
    }
    assert!(
        store
            .is_access_active(other.user_id, other.id, other.access_jti)
            .await
            .unwrap()
    );
    assert_eq!(store.revoke_all(user, None).await.unwrap(), 0);
}

async fn expired_tokens_and_sessions_are_gone(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    // Expiry is in whole seconds (EXPIREAT): an access token of 2 s lives 1 to 2 s, which is
    // long enough for the first check on a loaded machine; the session's 3 s end by 3.1 s.
    let s = new_session(user, 2, 3);
    store.create(s.clone()).await.unwrap();
    assert!(
        store
            .is_access_active(user, s.id, s.access_jti)
            .await
            .unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(
        !store
            .is_access_active(user, s.id, s.access_jti)
            .await
            .unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert!(
        !store.revoke(user, s.id).await.unwrap(),
        "an expired session is gone"
    );
    assert_eq!(
        store.rotate(rotation(&s, s.refresh_jti)).await.unwrap(),
        RotateOutcome::Unknown
    );
    assert!(store.list(user).await.unwrap().is_empty());
}

async fn list_shows_live_sessions_newest_first(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let mut older = new_session(user, 900, 3600);
    older.created_at -= 100;
    let newer = new_session(user, 900, 3600);
    store.create(older.clone()).await.unwrap();
    store.create(newer.clone()).await.unwrap();
    let listed = store.list(user).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        [newer.id, older.id]
    );
    assert_eq!(listed[0].user_agent.as_deref(), Some("test-agent/1.0"));
    assert_eq!(listed[0].ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(listed[0].expires_at, newer.refresh_exp);
    assert_eq!(listed[0].user_id, user);
}

async fn rotating_an_unknown_session_is_unknown(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), 900, 3600);
    assert_eq!(
        store.rotate(rotation(&s, s.refresh_jti)).await.unwrap(),
        RotateOutcome::Unknown
    );
    store.ping().await.unwrap();
}

async fn the_last_rotated_away_jti_gets_the_same_payload_within_the_grace_window(
    store: Arc<dyn SessionStore>,
) {
    let s = new_session(Uuid::new_v4(), 900, 3600);
    store.create(s.clone()).await.unwrap();
    let first = Rotation {
        grace_secs: 10,
        grace_payload: "pair-1".into(),
        ..rotation(&s, s.refresh_jti)
    };
    assert_eq!(
        store.rotate(first.clone()).await.unwrap(),
        RotateOutcome::Rotated
    );
    // The same token again: the first rotation's payload, and nothing changes.
    for _ in 0..3 {
        assert_eq!(
            store.rotate(rotation(&s, s.refresh_jti)).await.unwrap(),
            RotateOutcome::Grace("pair-1".into())
        );
    }
    assert!(
        store
            .is_access_active(s.user_id, s.id, first.new_access_jti)
            .await
            .unwrap()
    );
    // One rotation further, the first token is two rotations back: reuse.
    let second = Rotation {
        grace_secs: 10,
        grace_payload: "pair-2".into(),
        ..rotation(&s, first.new_refresh_jti)
    };
    assert_eq!(
        store.rotate(second.clone()).await.unwrap(),
        RotateOutcome::Rotated
    );
    assert_eq!(
        store.rotate(rotation(&s, s.refresh_jti)).await.unwrap(),
        RotateOutcome::Reused
    );
    assert!(
        !store
            .is_access_active(s.user_id, s.id, second.new_access_jti)
            .await
            .unwrap()
    );
}

async fn grace_ends_with_its_window(store: Arc<dyn SessionStore>) {
    let s = new_session(Uuid::new_v4(), 900, 3600);
    store.create(s.clone()).await.unwrap();
    let first = Rotation {
        grace_secs: 1,
        grace_payload: "pair-1".into(),
        ..rotation(&s, s.refresh_jti)
    };
    assert_eq!(
        store.rotate(first.clone()).await.unwrap(),
        RotateOutcome::Rotated
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        store.rotate(rotation(&s, s.refresh_jti)).await.unwrap(),
        RotateOutcome::Reused
    );
    assert!(
        !store
            .is_access_active(s.user_id, s.id, first.new_access_jti)
            .await
            .unwrap()
    );
}

async fn revoke_all_can_keep_one_session(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let keep = new_session(user, 900, 3600);
    let other = new_session(user, 900, 3600);
    store.create(keep.clone()).await.unwrap();
    store.create(other.clone()).await.unwrap();
    assert_eq!(store.revoke_all(user, Some(keep.id)).await.unwrap(), 1);
    assert!(
        store
            .is_access_active(user, keep.id, keep.access_jti)
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_access_active(user, other.id, other.access_jti)
            .await
            .unwrap()
    );
}

async fn a_use_is_recorded_in_last_used_at_and_never_revives_a_revoked_session(
    store: Arc<dyn SessionStore>,
) {
    // A session last used two minutes ago (longer than the recording resolution).
    let mut s = new_session(Uuid::new_v4(), 900, 3600);
    s.created_at = now() - 120;
    store.create(s.clone()).await.unwrap();
    let listed = store.list(s.user_id).await.unwrap();
    assert_eq!(listed[0].last_used_at, s.created_at);

    assert!(
        store
            .is_access_active(s.user_id, s.id, s.access_jti)
            .await
            .unwrap()
    );
    let listed = store.list(s.user_id).await.unwrap();
    assert!(
        listed[0].last_used_at >= now() - 1,
        "last_used_at {} after a use at {}",
        listed[0].last_used_at,
        now()
    );
    assert_eq!(listed[0].created_at, s.created_at);
    assert_eq!(listed[0].expires_at, s.refresh_exp);

    // A refused check records nothing, and a revoked session stays gone.
    assert!(store.revoke(s.user_id, s.id).await.unwrap());
    assert!(
        !store
            .is_access_active(s.user_id, s.id, s.access_jti)
            .await
            .unwrap()
    );
    assert!(store.list(s.user_id).await.unwrap().is_empty());
    assert!(
        !store.revoke(s.user_id, s.id).await.unwrap(),
        "already revoked"
    );
}
