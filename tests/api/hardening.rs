//! The holes a security review and fault tests found (issue 22), each closed and held shut.

use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::{backend_tests, helpers::TestApp};

backend_tests!(thousands_of_made_up_methods_leave_the_metrics_bounded);

async fn metrics_text(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// Sends `count` requests, each with a method the server has never seen.
async fn made_up_methods(app: &TestApp, round: usize, count: usize) {
    let methods = (0..count).map(|i| format!("M{round}x{i}{}", "X".repeat(300)));
    futures_util::stream::iter(methods)
        .for_each_concurrent(16, |name| async move {
            let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
            let response = app
                .client
                .request(method, app.url("/api/v1/users/me"))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_client_error(), "{}", response.status());
        })
        .await;
}

async fn thousands_of_made_up_methods_leave_the_metrics_bounded(app: TestApp) {
    // Any token is a valid HTTP method. The first round may add the series of `other` once;
    // a second round of as many new methods must add nothing at all. (The first /metrics
    // call adds its own series, so it comes before either count.)
    metrics_text(&app).await;
    made_up_methods(&app, 1, 3000).await;
    let first = metrics_text(&app).await;
    made_up_methods(&app, 2, 3000).await;
    let second = metrics_text(&app).await;
    assert_eq!(
        first.lines().count(),
        second.lines().count(),
        "3,000 more made-up methods grew /metrics"
    );
    assert!(!second.contains("XXXX"), "a made-up method became a label");
    assert!(second.contains(r#"method="other""#), "{second}");
}
