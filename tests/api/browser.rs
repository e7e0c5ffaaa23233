//! The account pages in a real headless Chromium (driven through chromedriver): the whole
//! password-reset flow as a user goes through it, from the mailed link to the next login.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    helpers::{Backend, TestApp},
    smtp::{SMTP, use_smtp},
};

pub const CHROMEDRIVER: &str = "chromedriver";
pub const CHROMIUM: &str = "chromium";

/// A chromedriver on its own port, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self { child, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    async fn browser(&self) -> Client {
        // fantoccini's client needs a process-wide rustls provider (it talks plain HTTP here).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), json!({ "args": args }));
        ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fill(browser: &Client, id: &str, text: &str) {
    let field = browser.find(Locator::Id(id)).await.expect("the field");
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn status_after_submit(browser: &Client) -> (String, String) {
    let button = browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap();
    button.click().await.unwrap();
    let status = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#status.done, #status.error"))
        .await
        .expect("an answer on the page");
    let class = status.attr("class").await.unwrap().unwrap_or_default();
    (class, status.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_resets_a_forgotten_password_in_a_real_browser() {
    crate::require!(Browser);
    let app = TestApp::spawn_with(Backend::Embedded, use_smtp).await;
    let user = app.signed_in_user().await;
    let response = app
        .post_json(
            "/api/v1/auth/password-reset/request",
            &json!({"email": user.email}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let link = SMTP.nth(&user.email, 2).await.link();

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&link).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "Choose a new password");

    // The page's policy stops injected inline script (its own script is the only one).
    browser
        .execute(
            "const s = document.createElement('script'); \
             s.textContent = 'window.injected = true'; document.body.appendChild(s);",
            vec![],
        )
        .await
        .unwrap();
    let injected = browser
        .execute("return window.injected === true", vec![])
        .await
        .unwrap();
    assert_eq!(injected, json!(false), "the CSP blocks inline script");

    // Two different passwords: the page says so and sends nothing.
    fill(&browser, "new_password", "a new password 1").await;
    fill(&browser, "new_password_confirm", "a new password 2").await;
    let (class, text) = status_after_submit(&browser).await;
    assert_eq!(class, "error");
    assert!(text.contains("differ"), "{text}");

    fill(&browser, "new_password_confirm", "a new password 1").await;
    let (class, text) = status_after_submit(&browser).await;
    assert_eq!(class, "done", "{text}");
    assert!(text.contains("signed out everywhere"), "{text}");
    browser.close().await.unwrap();

    crate::helpers::assert_session_revoked(&app, user.tokens()).await;
    let login = app.login(&user.email, "a new password 1").await;
    assert_eq!(login.status(), StatusCode::OK);

    // The same link again: the page shows the API's refusal.
    let browser = driver.browser().await;
    browser.goto(&link).await.unwrap();
    fill(&browser, "new_password", "yet another password").await;
    fill(&browser, "new_password_confirm", "yet another password").await;
    let (class, text) = status_after_submit(&browser).await;
    assert_eq!(class, "error");
    assert!(text.to_lowercase().contains("link"), "{text}");
    browser.close().await.unwrap();
}
