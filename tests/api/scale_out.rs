//! Scale-out (API.md section 11): the startup banner names the Redis it uses; three instances
//! on one PostgreSQL and one Redis (a server or a cluster) see what each of them does at the
//! next request; a Redis Cluster primary killed mid-traffic costs 503s, never a wrong answer.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use latchkey::{
    auth::keys::KeyKind,
    limits::Rate,
    startup::{Application, StartupError},
};
use reqwest::{Method, Response, StatusCode};
use serde_json::json;

use crate::{
    admin::admin_call,
    helpers::{
        Backend, RedisKind, TestApp, TestUser, Tokens, assert_error, assert_session_revoked,
        base_settings, claims_of, kid_of, status_and_json,
    },
    keys::{rotate, sleep_until, spawn_on_key_dir, wait_for_reload},
    redis_servers::Cluster,
};

/// The banner of a service on `kind`, on a SQLite file of its own.
async fn banner_on(kind: RedisKind) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = base_settings();
    settings.database.url = format!("sqlite://{}/l.db?mode=rwc", dir.path().display()).into();
    settings.mail.outbox_dir = Some(dir.path().join("outbox"));
    let (url, ca) = kind.server();
    settings.redis.url = Some(url.into());
    settings.redis.ca_cert = ca;
    Application::build(settings).await.expect("builds").banner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_names_a_tls_redis_and_its_ca() {
    crate::require!(RedisTls);
    let (url, ca) = RedisKind::Tls.server();
    let port = url.rsplit(':').next().unwrap();
    let banner = banner_on(RedisKind::Tls).await;
    let expected = format!(
        "sessions   Redis over TLS at 127.0.0.1:{port} (CA {})",
        ca.unwrap().display()
    );
    assert!(banner.contains(&expected), "{banner}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_names_a_redis_cluster_by_its_nodes() {
    crate::require!(RedisCluster);
    let (url, _) = RedisKind::Cluster.server();
    let nodes = url
        .strip_prefix("redis+cluster://")
        .unwrap()
        .replace(',', ", ");
    let banner = banner_on(RedisKind::Cluster).await;
    let expected = format!("sessions   Redis Cluster at {nodes}\n");
    assert!(banner.contains(&expected), "{banner}");
}

/// TLS checks the certificate: without the CA that signed it, the service does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_of_an_untrusted_ca_stops_the_startup() {
    crate::require!(RedisTls);
    let (url, _) = RedisKind::Tls.server();
    let dir = tempfile::tempdir().unwrap();
    let other = crate::redis_servers::TestCerts::write(dir.path()).unwrap();
    for ca in [None, Some(other.ca)] {
        let mut settings = base_settings();
        settings.database.url = format!("sqlite://{}/l.db?mode=rwc", dir.path().display()).into();
        settings.redis.url = Some(url.clone().into());
        settings.redis.ca_cert = ca;
        match Application::build(settings).await {
            Err(StartupError::Redis(err)) => {
                let chain = format!("{err:#}");
                assert!(
                    chain.contains("certificate") || chain.contains("Certificate"),
                    "{chain}"
                );
            }
            Err(other) => panic!("expected a Redis refusal, got {other:#}"),
            Ok(_) => panic!("a Redis with an untrusted certificate was accepted"),
        }
    }
}

/// The lifecycle on a Redis Cluster reached over TLS (`rediss+cluster://`, a private CA): the
/// cluster's nodes announce themselves by address, and each is checked against the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_runs_on_a_redis_cluster_over_tls() {
    crate::require!(RedisTls);
    crate::require!(OwnRedisCluster);
    let cluster = Cluster::start(3, 0, 5000, true).expect("a TLS Redis Cluster");
    let (url, ca) = (cluster.url(), cluster.ca());
    assert!(url.starts_with("rediss+cluster://127.0.0.1:"), "{url}");
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.redis.url = Some(url.into());
        s.redis.ca_cert = ca;
    })
    .await;
    crate::lifecycle::full_lifecycle_with_bearer_tokens(app).await;
}

mod what_one_instance_does_the_others_see_at_the_next_request {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        crate::require!(PostgresRedis);
        super::what_one_instance_does_the_others_see_at_the_next_request(Backend::PostgresRedis)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis_cluster() {
        crate::require!(PostgresRedisCluster);
        let backend = Backend::PostgresRedisCluster;
        super::what_one_instance_does_the_others_see_at_the_next_request(backend).await;
    }
}

/// Three instances on one database, one Redis and one key directory (re-read every second):
/// logout, admin revocation, disabling, a role change and rate limits through one of them
/// hold on the others at their next request, and a staged key rotation signs on one and
/// verifies on all.
async fn what_one_instance_does_the_others_see_at_the_next_request(backend: Backend) {
    let (a, _dir, paths) = spawn_on_key_dir(backend, |s| {
        s.limits.login_per_account = Rate::per_secs(3, 60)
    })
    .await;
    let b = a.spawn_sibling().await;
    let c = a.spawn_sibling().await;
    let admin = a.signed_in_admin().await;
    let admin = admin.tokens().access.as_str();

    // Logout on A.
    let user = b.signed_in_user().await;
    assert_eq!(c.me(&user.tokens().access).await.status(), StatusCode::OK);
    assert_eq!(
        a.logout(&user.tokens().access).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_session_revoked(&b, user.tokens()).await;
    assert_session_revoked(&c, user.tokens()).await;

    // An admin revokes every session through B.
    let user = c.signed_in_user().await;
    let path = format!("/api/v1/admin/users/{}/revoke-sessions", user.user_id());
    let response = admin_call(&b, Method::POST, &path, admin, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_session_revoked(&a, user.tokens()).await;
    assert_session_revoked(&c, user.tokens()).await;

    // An admin disables a user through C.
    let user = a.signed_in_user().await;
    let path = format!("/api/v1/admin/users/{}", user.user_id());
    let disable = Some(json!({"disabled": true}));
    let response = admin_call(&c, Method::PATCH, &path, admin, disable).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_session_revoked(&a, user.tokens()).await;
    assert_session_revoked(&b, user.tokens()).await;
    let login = b.login(&user.email, &user.password).await;
    assert_error(login, StatusCode::FORBIDDEN, "account_disabled").await;

    // An admin promotes a user through A: the old session ends everywhere, the next login on
    // C carries the role, and B lets it through.
    let user = b.signed_in_user().await;
    let path = format!("/api/v1/admin/users/{}", user.user_id());
    let promote = Some(json!({"role": "admin"}));
    let response = admin_call(&a, Method::PATCH, &path, admin, promote).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_session_revoked(&b, user.tokens()).await;
    assert_session_revoked(&c, user.tokens()).await;
    let (status, body) = status_and_json(c.login(&user.email, &user.password).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let promoted = Tokens::from_json(&body);
    assert_eq!(claims_of(&promoted.access)["role"], "admin");
    let listed = admin_call(
        &b,
        Method::GET,
        "/api/v1/admin/users",
        &promoted.access,
        None,
    )
    .await;
    assert_eq!(listed.status(), StatusCode::OK);

    // The login limit of one account (3 a minute) counts on every instance.
    let victim = "limited@example.com";
    for app in [&a, &b, &c] {
        let attempt = app.login(victim, "wrong password").await;
        assert_error(attempt, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let attempt = a.login(victim, "wrong password").await;
    assert_error(attempt, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    a_staged_key_rotation_signs_on_one_and_verifies_on_all([&a, &b, &c], &paths).await;
}

/// The new access key is known to every instance before it signs: a token one instance signs
/// with it verifies on the others, and a token of the old key keeps verifying.
async fn a_staged_key_rotation_signs_on_one_and_verifies_on_all(
    apps: [&TestApp; 3],
    paths: &latchkey::auth::keys::KeyPaths,
) {
    let [a, b, c] = apps;
    let before = c.signed_in_user().await;
    // Signing starts 3 s from now; the instances re-read the directory every second.
    let entry = rotate(a, paths, KeyKind::Access, &crate::helpers::NEXT_KEYS.0, 3);
    for app in apps {
        wait_for_reload(app, KeyKind::Access, &entry.kid).await;
        assert!(app.jwks_kids().await.contains(&entry.kid));
    }
    sleep_until(entry.signs_from).await;
    let after = a.signed_in_user().await;
    assert_eq!(kid_of(&after.tokens().access), entry.kid);
    for app in [b, c] {
        assert_eq!(
            app.me(&after.tokens().access).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            app.me(&before.tokens().access).await.status(),
            StatusCode::OK
        );
    }
}

/// What one request of the failover traffic got, and when it was sent.
struct Seen {
    sent: Instant,
    revoked: bool,
    status: StatusCode,
    retry_after: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Records `response` and returns its status with the token pair it carries, if any.
async fn record(
    log: &Log,
    sent: Instant,
    revoked: bool,
    response: Response,
) -> (StatusCode, Option<Tokens>) {
    let retry_after = response.headers().contains_key("retry-after");
    let (status, body) = status_and_json(response).await;
    log.lock().unwrap().push(Seen {
        sent,
        revoked,
        status,
        retry_after,
    });
    let tokens = body.get("refresh_token").map(|_| Tokens::from_json(&body));
    (status, tokens)
}

/// A signed-in user's traffic until `stop`: `me`, a refresh every 4th request (repeated after
/// a 503 until it is answered, so that `me` only uses a pair the service handed out) and a
/// login every 15th. Returns the last pair.
async fn live_traffic(
    app: Arc<TestApp>,
    user: TestUser,
    stop: Arc<AtomicBool>,
    log: Log,
) -> Tokens {
    let mut tokens = user.tokens().clone();
    let mut refresh_owed = false;
    for i in 1.. {
        if stop.load(Ordering::Relaxed) && !refresh_owed {
            break;
        }
        let sent = Instant::now();
        let response = if refresh_owed || i % 4 == 0 {
            app.refresh(&tokens.refresh).await
        } else if i % 15 == 0 {
            app.login(&user.email, &user.password).await
        } else {
            app.me(&tokens.access).await
        };
        let was_refresh = refresh_owed || i % 4 == 0;
        let (status, pair) = record(&log, sent, false, response).await;
        if let Some(pair) = pair {
            tokens = pair;
        }
        refresh_owed = was_refresh && status == StatusCode::SERVICE_UNAVAILABLE;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokens
}

/// A logged-out session's traffic until `stop`: its tokens must never pass.
async fn revoked_traffic(app: Arc<TestApp>, tokens: Tokens, stop: Arc<AtomicBool>, log: Log) {
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let sent = Instant::now();
        let response = if i % 2 == 0 {
            app.me(&tokens.access).await
        } else {
            app.refresh(&tokens.refresh).await
        };
        record(&log, sent, true, response).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the replica of the primary on `port` has every write made so far: the tag's
/// key is written after them, on the same replication stream.
async fn wait_for_the_replica(port: u16, tag: &str) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{tag}:replicated"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica has every write");
}

/// A Redis Cluster with replicas under traffic (signed-in users, logged-out ones, a probe
/// whose keys live on the primary that dies): the primary is killed; every answer meanwhile is
/// 200, or 503 with `Retry-After` (401 for the logged-out sessions), never a 500 and never a
/// pass for a logged-out token, and the service recovers by itself once the replica is
/// promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_primary_killed_mid_traffic_costs_503s_never_a_wrong_answer() {
    crate::require!(OwnRedisCluster);
    // A short node timeout: the replica takes over about a second after the crash.
    let mut cluster = Cluster::start(3, 1, 1000, false).expect("a Redis Cluster");
    let url = cluster.url();
    let app = TestApp::spawn_with(Backend::Embedded, |s| s.redis.url = Some(url.into())).await;
    let app = Arc::new(app);
    let probe = app.signed_in_user().await;
    let tag = format!("{{{}}}", probe.user_id());
    let doomed = cluster.primary_for(&tag).expect("the probe's primary");
    let mut live = Vec::new();
    for _ in 0..9 {
        live.push(app.signed_in_user().await);
    }
    let mut revoked = Vec::new();
    for _ in 0..3 {
        let user = app.signed_in_user().await;
        assert_eq!(
            app.logout(&user.tokens().access).await.status(),
            StatusCode::NO_CONTENT
        );
        revoked.push(user.tokens().clone());
    }
    wait_for_the_replica(doomed, &tag).await;

    let (stop, log): (Arc<AtomicBool>, Log) = Default::default();
    let live_tasks: Vec<_> = live
        .iter()
        .map(|user| {
            tokio::spawn(live_traffic(
                app.clone(),
                user.clone(),
                stop.clone(),
                log.clone(),
            ))
        })
        .collect();
    let revoked_tasks: Vec<_> = revoked
        .iter()
        .map(|tokens| {
            tokio::spawn(revoked_traffic(
                app.clone(),
                tokens.clone(),
                stop.clone(),
                log.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed = Instant::now();
    let left = cluster.kill(doomed);
    let recovered = loop {
        if app.me(&probe.tokens().access).await.status() == StatusCode::OK {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no recovery within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cluster
        .wait_until_healthy(&left, Duration::from_secs(30))
        .expect("the cluster heals");
    let healed = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut last_pairs = Vec::new();
    for task in live_tasks {
        last_pairs.push(task.await.unwrap());
    }
    for task in revoked_tasks {
        task.await.unwrap();
    }

    let seen = std::mem::take(&mut *log.lock().unwrap());
    the_failover_answers_were_right(&seen, killed, stopped);
    // After it, every live session works and every logged-out one stays refused.
    for tokens in &last_pairs {
        assert_eq!(app.me(&tokens.access).await.status(), StatusCode::OK);
        assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
    }
    for tokens in &revoked {
        assert_session_revoked(&app, tokens).await;
    }
    let unavailable = seen
        .iter()
        .filter(|s| s.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    eprintln!(
        "failover: {} requests, {unavailable} answered 503; the service answered the dead \
         primary's slots again {:.1} s after the kill (cluster_state:ok on every node after {:.1} s)",
        seen.len(),
        recovered.as_secs_f64(),
        healed.as_secs_f64()
    );
}

/// 200 or 503 + `Retry-After` for live sessions, 401 or 503 + `Retry-After` for logged-out
/// ones; some 503s after the kill (the failover was felt) and none in the last second.
fn the_failover_answers_were_right(seen: &[Seen], killed: Instant, stopped: Instant) {
    for s in seen {
        let expected = if s.revoked {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        assert!(
            s.status == expected || s.status == StatusCode::SERVICE_UNAVAILABLE,
            "{} for a {} session, {:?} after the kill",
            s.status,
            if s.revoked { "logged-out" } else { "live" },
            s.sent.checked_duration_since(killed)
        );
        if s.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(s.retry_after, "a 503 without Retry-After");
        }
    }
    let unavailable = |s: &&Seen| s.status == StatusCode::SERVICE_UNAVAILABLE;
    assert!(
        seen.iter()
            .filter(|s| s.sent > killed)
            .any(|s| unavailable(&s)),
        "the traffic never met the failover"
    );
    let last_second = stopped - Duration::from_secs(1);
    let late = seen
        .iter()
        .filter(|s| s.sent > last_second)
        .filter(unavailable)
        .count();
    assert_eq!(late, 0, "503s a while after the recovery");
}
