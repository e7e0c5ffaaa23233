//! Scale-out (API.md section 11): the startup banner names the Redis it uses.

use latchkey::startup::Application;

use crate::helpers::{RedisKind, base_settings};

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
