//! The email flows (API.md section 8) over real SMTP: verification, password reset and change
//! of address, the links' rules, answers that do not reveal accounts, and delivery that
//! survives outages and restarts and sends each mail once.

use std::time::Duration;

use latchkey::db::entities::{audit_event, link_token, mail_outbox};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::{
    backend_tests,
    helpers::{
        Backend, TestApp, TestUser, assert_error, assert_session_revoked, captured_logs,
        status_and_json,
    },
    proxy::Proxy,
    smtp::{Received, SMTP, send_to, use_smtp},
};

/// Registers `user` (a verification mail follows) and returns its id.
async fn register(app: &TestApp, user: &TestUser) -> String {
    let response = app.register(&user.name, &user.email, &user.password).await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["user"]["id"].as_str().expect("user id").to_owned()
}

async fn me(app: &TestApp, access: &str) -> Value {
    let (status, body) = status_and_json(app.me(access).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Asserts that an event of each of `expected` types was recorded about `user_id`, waiting up
/// to 5 s: the mail worker audits an attempt after recording it in the outbox.
async fn assert_audited(app: &TestApp, user_id: &str, expected: &[&str]) {
    let id = uuid::Uuid::parse_str(user_id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events: Vec<String> = audit_event::Entity::find()
            .filter(audit_event::Column::UserId.eq(id))
            .all(app.state.db.connection())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        let missing = expected
            .iter()
            .find(|kind| !events.iter().any(|e| e == *kind));
        match missing {
            None => return,
            Some(kind) if tokio::time::Instant::now() > deadline => {
                panic!("{kind} in {events:?}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn outbox(app: &TestApp) -> Vec<mail_outbox::Model> {
    mail_outbox::Entity::find()
        .all(app.state.db.connection())
        .await
        .unwrap()
}

/// Waits (up to 20 s) until `done` holds for the outbox.
async fn wait_for_outbox(app: &TestApp, what: &str, done: impl Fn(&[mail_outbox::Model]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&outbox(app).await) {
        assert!(tokio::time::Instant::now() < deadline, "outbox: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn request(app: &TestApp, path: &str, email: &str) -> (StatusCode, Value) {
    status_and_json(app.post_json(path, &json!({"email": email})).await).await
}

const VERIFY_REQUEST: &str = "/api/v1/auth/verify-email/request";
const RESET_REQUEST: &str = "/api/v1/auth/password-reset/request";

async fn spend_reset(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/password-reset",
        &json!({"token": token, "new_password": password}),
    )
    .await
}

backend_tests!(with(use_smtp) =>
    a_verification_link_proves_the_address_once,
    a_newer_link_voids_the_older_one,
    link_requests_never_reveal_whether_an_address_has_an_account,
    a_password_reset_ends_every_session_and_proves_the_address,
    of_two_concurrent_uses_of_a_link_exactly_one_wins,
    expired_and_made_up_links_are_invalid,
    a_change_of_address_waits_for_the_new_address_to_confirm_it,
    a_change_of_address_to_a_taken_address_is_refused,
    link_requests_are_rate_limited_per_address_and_per_ip,
    a_refused_mail_ends_dead_visible_to_admins_without_its_link,
    opening_a_link_page_spends_nothing_and_the_page_is_locked_down,
);

// Their instance sends through a proxy, made before the instance, that cuts SMTP.
crate::per_backend_tests!(
    an_smtp_outage_delays_mail_and_loses_none,
    a_mail_queued_before_a_restart_goes_out_once_after_it
);

/// An instance whose SMTP server is cut, retrying after `retry`.
async fn cut_smtp(backend: Backend, retry: Duration) -> (TestApp, Proxy) {
    let proxy = Proxy::start(SMTP.addr).await;
    proxy.cut();
    let url = format!("smtp://127.0.0.1:{}", proxy.port);
    let configure = |s: &mut latchkey::config::Settings| {
        send_to(s, &url);
        s.mail.delivery.retry_base = retry;
        s.mail.delivery.retry_max = retry;
    };
    (TestApp::spawn_with(backend, configure).await, proxy)
}

backend_tests!(with(required) => required_verification_keeps_unverified_accounts_out);

fn required(settings: &mut latchkey::config::Settings) {
    use_smtp(settings);
    settings.accounts.email.verification = latchkey::accounts::Verification::Required;
}

async fn a_verification_link_proves_the_address_once(app: TestApp) {
    let user = TestUser::generate();
    let id = register(&app, &user).await;
    let mail = SMTP.nth(&user.email, 1).await;

    assert_eq!(mail.subject, "Confirm your email address");
    assert!(mail.from.contains("no-reply@localhost"), "{}", mail.from);
    let link = mail.link();
    let page = format!("{}/account/verify-email?token=", app.address);
    assert!(link.starts_with(&page), "{link}");
    let token = mail.token();
    assert!(
        mail.raw.contains("multipart/alternative"),
        "text and HTML parts"
    );
    assert!(mail.html.contains(&token), "the HTML part has the link");
    assert!(
        !mail.text.contains(&user.password),
        "no secret but the link"
    );
    assert!(token.len() >= 43, "32 random bytes, base64url: {token}");

    let login = app.login(&user.email, &user.password).await;
    let (_, body) = status_and_json(login).await;
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me(&app, &access).await["user"]["email_verified"], false);

    let response = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": token}))
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(me(&app, &access).await["user"]["email_verified"], true);

    // Single use.
    let again = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_error(again, StatusCode::BAD_REQUEST, "link_invalid").await;
    // Only the hash of the token is stored.
    let stored = link_token::Entity::find()
        .all(app.state.db.connection())
        .await
        .unwrap();
    assert!(stored.iter().all(|l| !l.token_hash.contains(&token)));
    // A verified address gets no more verification mails.
    let (status, _) = request(&app, VERIFY_REQUEST, &user.email).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The sent mail's row is gone (it held the link).
    wait_for_outbox(&app, "empty", <[_]>::is_empty).await;
    assert_eq!(SMTP.mails_to(&user.email).len(), 1);
    let expected = [
        "email_verification_requested",
        "mail_sent",
        "email_verified",
    ];
    assert_audited(&app, &id, &expected).await;
}

async fn a_newer_link_voids_the_older_one(app: TestApp) {
    let user = TestUser::generate();
    register(&app, &user).await;
    let first = SMTP.nth(&user.email, 1).await.token();
    let (status, _) = request(&app, VERIFY_REQUEST, &user.email).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let second = SMTP.nth(&user.email, 2).await.token();
    assert_ne!(first, second);

    let old = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": first}))
        .await;
    assert_error(old, StatusCode::BAD_REQUEST, "link_invalid").await;
    let new = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": second}))
        .await;
    assert_eq!(new.status(), StatusCode::OK);
}

async fn link_requests_never_reveal_whether_an_address_has_an_account(app: TestApp) {
    let (existing, disabled, verified) = (
        TestUser::generate(),
        TestUser::generate(),
        TestUser::generate(),
    );
    let mut ids = Vec::new();
    for user in [&existing, &disabled, &verified] {
        ids.push(register(&app, user).await);
        SMTP.nth(&user.email, 1).await;
    }
    let disabled_id = &ids[1];
    let token = SMTP.nth(&verified.email, 1).await.token();
    let response = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let admin = app.signed_in_admin().await;
    let disable = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{disabled_id}")))
        .bearer_auth(&admin.tokens().access)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(disable.status(), StatusCode::OK);
    let unknown = TestUser::generate().email;

    for path in [VERIFY_REQUEST, RESET_REQUEST] {
        let mut answers = Vec::new();
        for email in [&existing.email, &disabled.email, &verified.email, &unknown] {
            answers.push(request(&app, path, email).await);
        }
        assert!(
            answers.iter().all(|a| a == &answers[0]),
            "{path}: {answers:?}"
        );
        assert_eq!(answers[0].0, StatusCode::ACCEPTED);
    }
    // Mail went only where an account may get it: a second mail to `existing` (verification)
    // and a third (reset), one reset link to `verified`, nothing to the others.
    SMTP.wait_for(&existing.email, 3).await;
    SMTP.wait_for(&verified.email, 2).await;
    wait_for_outbox(&app, "empty", <[_]>::is_empty).await;
    assert_eq!(SMTP.mails_to(&existing.email).len(), 3);
    assert_eq!(SMTP.mails_to(&verified.email).len(), 2);
    assert_eq!(
        SMTP.mails_to(&disabled.email).len(),
        1,
        "only the registration mail"
    );
    assert!(SMTP.mails_to(&unknown).is_empty());
}

async fn a_password_reset_ends_every_session_and_proves_the_address(app: TestApp) {
    let user = app.signed_in_user().await;
    SMTP.nth(&user.email, 1).await;
    let second = app.login(&user.email, &user.password).await;
    let second = crate::helpers::Tokens::from_json(&second.json().await.unwrap());

    let (status, _) = request(&app, RESET_REQUEST, &user.email).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mail = SMTP.nth(&user.email, 2).await;
    assert_eq!(mail.subject, "Reset your password");
    assert!(mail.link().contains("/account/reset-password?token="));

    let new_password = "brand new password 1";
    let response = spend_reset(&app, &mail.token(), new_password).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    assert_session_revoked(&app, user.tokens()).await;
    assert_session_revoked(&app, &second).await;
    let old = app.login(&user.email, &user.password).await;
    assert_error(old, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let (status, body) = status_and_json(app.login(&user.email, new_password).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["user"]["email_verified"], true,
        "a reset proves the address"
    );
    let again = spend_reset(&app, &mail.token(), "another new password").await;
    assert_error(again, StatusCode::BAD_REQUEST, "link_invalid").await;
    // A too-short password is a 422 that leaves the link usable.
    let (status, _) = request(&app, RESET_REQUEST, &user.email).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = SMTP.nth(&user.email, 3).await.token();
    let short = spend_reset(&app, &token, "short").await;
    assert_error(short, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(
        spend_reset(&app, &token, "fine password 2").await.status(),
        StatusCode::NO_CONTENT
    );
    let expected = ["password_reset_requested", "password_reset"];
    assert_audited(&app, user.id.as_deref().unwrap(), &expected).await;
}

async fn of_two_concurrent_uses_of_a_link_exactly_one_wins(app: TestApp) {
    let user = TestUser::generate();
    register(&app, &user).await;
    request(&app, RESET_REQUEST, &user.email).await;
    let token = SMTP.nth(&user.email, 2).await.token();

    let attempts = (0..6).map(|i| {
        let (app, token) = (&app, token.clone());
        async move {
            (
                i,
                spend_reset(app, &token, &format!("racing password {i}"))
                    .await
                    .status(),
            )
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, s)| *s == StatusCode::NO_CONTENT)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(_, s)| *s == StatusCode::NO_CONTENT || *s == StatusCode::BAD_REQUEST),
        "{results:?}"
    );
    let password = format!("racing password {}", winners[0].0);
    assert_eq!(
        app.login(&user.email, &password).await.status(),
        StatusCode::OK
    );
}

async fn expired_and_made_up_links_are_invalid(app: TestApp) {
    let user = TestUser::generate();
    register(&app, &user).await;
    let token = SMTP.nth(&user.email, 1).await.token();
    // Its lifetime passes (set in the row, as a clock moving on would).
    use sea_orm::sea_query::Expr;
    link_token::Entity::update_many()
        .col_expr(
            link_token::Column::ExpiresAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .exec(app.state.db.connection())
        .await
        .unwrap();
    for token in [token.as_str(), "made-up-token", &"x".repeat(5000)] {
        let response = app
            .post_json("/api/v1/auth/verify-email", &json!({"token": token}))
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, "link_invalid").await;
        let response = spend_reset(&app, token, "a good new password").await;
        assert_error(response, StatusCode::BAD_REQUEST, "link_invalid").await;
        let response = app
            .post_json("/api/v1/auth/confirm-email", &json!({"token": token}))
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, "link_invalid").await;
    }
    // A verification link does not reset a password.
    request(&app, VERIFY_REQUEST, &user.email).await;
    let token = SMTP.nth(&user.email, 2).await.token();
    let response = spend_reset(&app, &token, "a good new password").await;
    assert_error(response, StatusCode::BAD_REQUEST, "link_invalid").await;
    let missing = app.post_json("/api/v1/auth/verify-email", &json!({})).await;
    assert_error(
        missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

async fn change_email(
    app: &TestApp,
    user: &TestUser,
    new_email: &str,
    password: &str,
) -> reqwest::Response {
    app.client
        .patch(app.url("/api/v1/users/me/email"))
        .bearer_auth(&user.tokens().access)
        .json(&json!({"new_email": new_email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn a_change_of_address_waits_for_the_new_address_to_confirm_it(app: TestApp) {
    let user = app.signed_in_user().await;
    SMTP.nth(&user.email, 1).await;
    let new_email = TestUser::generate().email;

    let wrong = change_email(&app, &user, &new_email, "wrong password").await;
    let body = assert_error(wrong, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["error"]["details"][0]["field"], "password");
    let response = change_email(&app, &user, &new_email.to_uppercase(), &user.password).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let confirm = SMTP.nth(&new_email, 1).await;
    assert!(confirm.link().contains("/account/confirm-email?token="));
    let notice = SMTP.nth(&user.email, 2).await;
    assert!(notice.text.contains(&new_email), "{}", notice.text);
    assert!(
        !notice.text.contains("token="),
        "the old address gets no link"
    );
    // Nothing changes until the new address confirms.
    assert_eq!(
        me(&app, &user.tokens().access).await["user"]["email"],
        user.email
    );
    let early = app.login(&new_email, &user.password).await;
    assert_eq!(early.status(), StatusCode::UNAUTHORIZED);

    let response = app
        .post_json(
            "/api/v1/auth/confirm-email",
            &json!({"token": confirm.token()}),
        )
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], new_email);
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(
        app.login(&new_email, &user.password).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let expected = ["email_change_requested", "email_changed"];
    assert_audited(&app, user.id.as_deref().unwrap(), &expected).await;
}

async fn a_change_of_address_to_a_taken_address_is_refused(app: TestApp) {
    let user = app.signed_in_user().await;
    let other = app.signed_in_user().await;
    let taken = change_email(&app, &user, &other.email, &user.password).await;
    assert_error(taken, StatusCode::CONFLICT, "email_taken").await;
    let same = change_email(&app, &user, &user.email, &user.password).await;
    assert_error(same, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // Taken between the request and the confirmation.
    let wanted = TestUser::generate();
    let response = change_email(&app, &user, &wanted.email, &user.password).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let token = SMTP.nth(&wanted.email, 1).await.token();
    register(&app, &wanted).await;
    let late = app
        .post_json("/api/v1/auth/confirm-email", &json!({"token": token}))
        .await;
    assert_error(late, StatusCode::CONFLICT, "email_taken").await;
    assert_eq!(
        me(&app, &user.tokens().access).await["user"]["email"],
        user.email
    );
}

async fn link_requests_are_rate_limited_per_address_and_per_ip(app: TestApp) {
    use latchkey::limits::Rate;
    // The limits of this test's server, tighter than the suite's.
    let app = app
        .spawn_sibling_with(|s| {
            s.limits.email_per_address = Rate::per_secs(2, 3600);
            s.limits.email_per_ip = Rate::per_secs(4, 3600);
        })
        .await;
    let email = TestUser::generate().email;
    for _ in 0..2 {
        assert_eq!(
            request(&app, RESET_REQUEST, &email).await.0,
            StatusCode::ACCEPTED
        );
    }
    let limited = app
        .post_json(VERIFY_REQUEST, &json!({"email": email}))
        .await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The same IP, other addresses: the per-IP limit (4) is reached at the next request.
    assert_eq!(
        request(&app, RESET_REQUEST, &TestUser::generate().email)
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let limited = request(&app, RESET_REQUEST, &TestUser::generate().email).await;
    assert_eq!(limited.0, StatusCode::TOO_MANY_REQUESTS, "{:?}", limited.1);
}

async fn a_refused_mail_ends_dead_visible_to_admins_without_its_link(app: TestApp) {
    let mut user = TestUser::generate();
    user.email = format!("bounce-{}", user.email);
    let id = register(&app, &user).await;
    wait_for_outbox(&app, "the mail is dead", |mails| {
        mails.iter().any(|m| m.status == mail_outbox::Status::Dead)
    })
    .await;
    let dead = outbox(&app).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1, "a permanent refusal is not retried");
    assert!(
        dead[0].body_text.is_none() && dead[0].link.is_none(),
        "the link is wiped"
    );

    let admin = app.signed_in_admin().await;
    let listing = app
        .client
        .get(app.url("/api/v1/admin/mail?status=dead"))
        .bearer_auth(&admin.tokens().access)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(listing).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mail = &body["mails"][0];
    assert_eq!(mail["recipient"], user.email);
    assert_eq!(mail["user_id"], id);
    assert_eq!(mail["kind"], "verify_email");
    assert_eq!(mail["status"], "dead");
    assert!(
        mail["last_error"].as_str().unwrap().contains("550"),
        "{mail}"
    );
    assert!(
        !body.to_string().contains("token="),
        "no links in the listing"
    );
    let user_view = app.signed_in_user().await;
    let forbidden = app
        .client
        .get(app.url("/api/v1/admin/mail"))
        .bearer_auth(&user_view.tokens().access)
        .send()
        .await
        .unwrap();
    assert_error(forbidden, StatusCode::FORBIDDEN, "forbidden").await;

    assert_audited(&app, &id, &["mail_delivery_failed"]).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"latchkey_mail_deliveries_total{kind="verify_email",result="dead"}"#),
        "{metrics}"
    );
}

async fn opening_a_link_page_spends_nothing_and_the_page_is_locked_down(app: TestApp) {
    let user = TestUser::generate();
    register(&app, &user).await;
    let mail = SMTP.nth(&user.email, 1).await;
    for _ in 0..2 {
        let page = app.client.get(mail.link()).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(page.headers()["cache-control"], "no-store");
        let html = page.text().await.unwrap();
        assert!(html.contains("<form") && html.contains(&mail.token()));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no third-party resources"
        );
    }
    let hostile = app
        .client
        .get(app.url("/account/reset-password?token=%22%3E%3Cscript%3Ealert(1)%3C/script%3E"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!hostile.contains("<script>alert"), "the token is escaped");
    let response = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": mail.token()}))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "opening the page spent nothing"
    );
}

async fn an_smtp_outage_delays_mail_and_loses_none(backend: Backend) {
    let (app, proxy) = cut_smtp(backend, Duration::from_millis(100)).await;
    let user = TestUser::generate();
    let started = tokio::time::Instant::now();
    let id = register(&app, &user).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the answer does not wait for SMTP"
    );
    wait_for_outbox(&app, "two failed attempts", |mails| {
        mails
            .iter()
            .any(|m| m.attempts >= 2 && m.last_error.is_some())
    })
    .await;
    assert!(SMTP.mails_to(&user.email).is_empty());

    proxy.restore().await;
    let mails = SMTP.wait_for(&user.email, 1).await;
    wait_for_outbox(&app, "empty", <[_]>::is_empty).await;
    assert_eq!(SMTP.mails_to(&user.email).len(), 1, "{mails:?}");
    assert_audited(&app, &id, &["mail_delivery_failed", "mail_sent"]).await;
}

async fn a_mail_queued_before_a_restart_goes_out_once_after_it(backend: Backend) {
    // The retry waits long enough that the restart comes before it: no attempt is in flight
    // (leased to the stopping worker) when the instance stops.
    let (app, proxy) = cut_smtp(backend, Duration::from_secs(3)).await;
    let user = TestUser::generate();
    register(&app, &user).await;
    // A failed attempt recorded (not one in flight: a mail being sent is leased to its worker).
    wait_for_outbox(&app, "one failed attempt", |mails| {
        mails
            .iter()
            .any(|m| m.attempts >= 1 && m.status == mail_outbox::Status::Pending)
    })
    .await;

    let app = app.restart().await;
    proxy.restore().await;
    SMTP.wait_for(&user.email, 1).await;
    wait_for_outbox(&app, "empty", <[_]>::is_empty).await;
    assert_eq!(SMTP.mails_to(&user.email).len(), 1);
}

async fn required_verification_keeps_unverified_accounts_out(app: TestApp) {
    let user = TestUser::generate();
    register(&app, &user).await;
    let refused = app.login(&user.email, &user.password).await;
    assert_error(refused, StatusCode::FORBIDDEN, "email_not_verified").await;
    // A wrong password is still just wrong: nothing says the account exists.
    let wrong = app.login(&user.email, "wrong password").await;
    assert_error(wrong, StatusCode::UNAUTHORIZED, "invalid_credentials").await;

    let token = SMTP.nth(&user.email, 1).await.token();
    let response = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::OK
    );
}

/// Two instances on one PostgreSQL deliver one outbox: every mail goes out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_send_the_same_mail_twice() {
    crate::require!(PostgresRedis);
    let app = TestApp::spawn_with(Backend::PostgresRedis, use_smtp).await;
    let sibling = app.spawn_sibling().await;
    let users: Vec<TestUser> = (0..24).map(|_| TestUser::generate()).collect();
    let registrations = users.iter().enumerate().map(|(i, user)| {
        let instance = if i % 2 == 0 { &app } else { &sibling };
        register(instance, user)
    });
    futures_util::future::join_all(registrations).await;
    for user in &users {
        SMTP.wait_for(&user.email, 1).await;
    }
    wait_for_outbox(&app, "empty", <[_]>::is_empty).await;
    for user in &users {
        assert_eq!(SMTP.mails_to(&user.email).len(), 1, "{}", user.email);
    }
}

/// Without `SMTP_URL`, development writes each mail as an `.eml` file and logs its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mail_is_written_to_the_outbox_folder_with_its_link_logged() {
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.accounts.email.verification = latchkey::accounts::Verification::Optional;
        s.mail.delivery.poll_every = Duration::from_millis(50);
    })
    .await;
    let user = TestUser::generate();
    register(&app, &user).await;
    let dir = app.outbox_dir();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let file = loop {
        let files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(file) = files
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "eml"))
        {
            break file;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no .eml in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mail = Received::parse(String::new(), Vec::new(), &std::fs::read(&file).unwrap());
    assert!(mail.raw.contains(&user.email));
    let link = mail.link();
    assert!(link.contains("/account/verify-email?token="), "{link}");
    wait_for_outbox(&app, "empty", <[_]>::is_empty).await;
    assert!(captured_logs().contains(&link), "the link is logged");
}

/// With `EMAIL_FLOWS=off` the endpoints do not exist for clients, and no mail is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_email_flows_off_the_endpoints_answer_not_found() {
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.accounts.email.enabled = false;
    })
    .await;
    let user = TestUser::generate();
    register(&app, &user).await;
    for path in [VERIFY_REQUEST, RESET_REQUEST] {
        let response = app.post_json(path, &json!({"email": user.email})).await;
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert!(outbox(&app).await.is_empty());
}
