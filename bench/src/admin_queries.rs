//! The admin listings on a grown database: each request timed over HTTP, one at a time, as an
//! admin's browser sends them (first pages, deep pages by number and by `after`, filters).

use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{http::Http, login, register, seed};

/// Timed requests per query; the first of each warms the cache and is not counted.
const RUNS: usize = 11;

/// An admin's access token: an account registered over HTTP and promoted in the database.
async fn admin_token(http: &Http, db: &sea_orm::DatabaseConnection) -> anyhow::Result<String> {
    use sea_orm::ConnectionTrait;
    let email = "bench-admin@bench.example";
    if !register(http, email).await {
        bail!("registering the benchmark's admin failed");
    }
    db.execute_unprepared(&format!(
        "UPDATE users SET role = 'admin' WHERE email = '{email}'"
    ))
    .await?;
    let (access, _) = login(http, email).await.context("the admin's login")?;
    Ok(access)
}

/// Sends `path` [`RUNS`] times; the answer and the times in milliseconds of all but the first.
async fn timed(http: &Http, token: &str, path: &str) -> anyhow::Result<(Value, Vec<f64>)> {
    let mut times = Vec::new();
    let mut last = Value::Null;
    for run in 0..RUNS {
        let started = Instant::now();
        let reply = http.get(path, Some(token)).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if !reply.status.is_success() {
            bail!("{path}: {}", reply.status);
        }
        last = reply.json().context("a JSON answer")?;
        if run > 0 {
            times.push(ms);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((last, times))
}

/// Times `path` and prints one line: median and slowest, and how many items it returned.
async fn report(
    http: &Http,
    token: &str,
    name: &str,
    path: &str,
    items: &str,
) -> anyhow::Result<Value> {
    let (body, times) = timed(http, token, path).await?;
    let round = |ms: f64| (ms * 100.0).round() / 100.0;
    println!(
        "{}",
        json!({
            "admin_query": name,
            "path": path,
            "median_ms": round(times[times.len() / 2]),
            "max_ms": round(times[times.len() - 1]),
            "items": body[items].as_array().map_or(0, Vec::len),
            "total": body["total"],
        })
    );
    Ok(body)
}

/// The `next` of numbered page `page` of `listing`: where a walk by `after` would be there.
async fn cursor_at(http: &Http, token: &str, listing: &str, page: u64) -> anyhow::Result<String> {
    let reply = http
        .get(&format!("{listing}?page={page}"), Some(token))
        .await?;
    let body = reply.json().context("a JSON answer")?;
    body["next"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no next on page {page} of {listing}: {body}"))
}

/// The first page of a listing, its middle page by number, and the same page by `after`.
async fn depths(
    http: &Http,
    token: &str,
    (name, path, items): (&str, &str, &str),
    rows: u64,
) -> anyhow::Result<()> {
    let middle = (rows / 20 / 2).clamp(2, 10_000_000);
    let first = format!("{path}?page=1");
    report(http, token, &format!("{name}_first_page"), &first, items).await?;
    let numbered = format!("{path}?page={middle}");
    let label = format!("{name}_middle_page_by_number");
    report(http, token, &label, &numbered, items).await?;
    let after = format!(
        "{path}?after={}",
        cursor_at(http, token, path, middle - 1).await?
    );
    let label = format!("{name}_middle_page_by_after");
    report(http, token, &label, &after, items).await?;
    Ok(())
}

/// The users and audit listings at the depths a grown database has (`users` stored users,
/// `audit` events), and their filters.
pub async fn measure(
    http: &Http,
    db: &sea_orm::DatabaseConnection,
    users: u64,
    audit: u64,
) -> anyhow::Result<()> {
    let token = admin_token(http, db).await?;
    let (u, a) = ("/api/v1/admin/users", "/api/v1/admin/audit");
    depths(http, &token, ("users", u, "users"), users).await?;
    depths(http, &token, ("audit", a, "events"), audit).await?;
    let one_user = seed::user_id(users.max(2) / 2);
    for (name, path, items) in [
        ("users_role_admin", format!("{u}?role=admin"), "users"),
        (
            "users_email_contains",
            format!("{u}?email=seeded-{}@", users / 3),
            "users",
        ),
        (
            "audit_login_failed",
            format!("{a}?event_type=login_failed"),
            "events",
        ),
        (
            "audit_one_user",
            format!("{a}?user_id={one_user}"),
            "events",
        ),
    ] {
        report(http, &token, name, &path, items).await?;
    }
    Ok(())
}
