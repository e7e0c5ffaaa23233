//! A corpus of malformed requests: each gets a clear 4xx with the contract's error body, never
//! a 5xx, and nothing is stored by any of them.

use reqwest::{Method, StatusCode};

use crate::{
    backend_tests,
    helpers::{TestApp, status_and_json},
};

backend_tests!(
    malformed_requests_get_clear_client_errors,
    unknown_routes_and_methods_get_json_errors
);

struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method: Method::POST,
        path,
        content_type,
        body: body.into(),
        status,
        code,
    }
}

const JSON: Option<&str> = Some("application/json");
const REGISTER: &str = "/api/v1/auth/register";
const LOGIN: &str = "/api/v1/auth/login";
const REFRESH: &str = "/api/v1/auth/refresh";

fn corpus() -> Vec<Case> {
    let long = "x".repeat(129);
    let huge = format!(
        r#"{{"email": "a@b.cd", "password": "{}"}}"#,
        "p".repeat(70 * 1024)
    );
    vec![
        case(
            "not JSON at all",
            LOGIN,
            JSON,
            "hello",
            400,
            "malformed_request",
        ),
        case(
            "truncated JSON",
            LOGIN,
            JSON,
            r#"{"email": "a@b.c"#,
            400,
            "malformed_request",
        ),
        case(
            "trailing garbage",
            LOGIN,
            JSON,
            r#"{"email": "a@b.cd"} x"#,
            400,
            "malformed_request",
        ),
        case(
            "JSON array body",
            LOGIN,
            JSON,
            "[1, 2]",
            400,
            "malformed_request",
        ),
        case(
            "JSON string body",
            LOGIN,
            JSON,
            r#""email""#,
            400,
            "malformed_request",
        ),
        case(
            "JSON null body",
            LOGIN,
            JSON,
            "null",
            400,
            "malformed_request",
        ),
        case(
            "empty body with JSON type",
            REGISTER,
            JSON,
            "",
            400,
            "malformed_request",
        ),
        case(
            "number for a string",
            LOGIN,
            JSON,
            r#"{"email": 5, "password": "abcdefgh"}"#,
            400,
            "malformed_request",
        ),
        case(
            "bool for a string",
            REGISTER,
            JSON,
            r#"{"name": true, "email": "a@b.cd", "password": "abcdefgh", "password_confirm": "abcdefgh"}"#,
            400,
            "malformed_request",
        ),
        case(
            "object for a string",
            LOGIN,
            JSON,
            r#"{"email": {"$ne": null}, "password": "abcdefgh"}"#,
            400,
            "malformed_request",
        ),
        case(
            "array for a string",
            LOGIN,
            JSON,
            r#"{"email": ["a@b.cd"], "password": "abcdefgh"}"#,
            400,
            "malformed_request",
        ),
        case(
            "missing every field",
            REGISTER,
            JSON,
            "{}",
            422,
            "validation_failed",
        ),
        case(
            "null fields",
            LOGIN,
            JSON,
            r#"{"email": null, "password": null}"#,
            422,
            "validation_failed",
        ),
        case(
            "missing password_confirm",
            REGISTER,
            JSON,
            r#"{"name": "A", "email": "a@b.cd", "password": "abcdefgh"}"#,
            422,
            "validation_failed",
        ),
        case(
            "overlong password on register",
            REGISTER,
            JSON,
            format!(
                r#"{{"name": "A", "email": "a@b.cd", "password": "{long}", "password_confirm": "{long}"}}"#
            ),
            422,
            "validation_failed",
        ),
        case(
            "overlong password on login",
            LOGIN,
            JSON,
            format!(r#"{{"email": "a@b.cd", "password": "{long}"}}"#),
            422,
            "validation_failed",
        ),
        case(
            "seven-character password",
            REGISTER,
            JSON,
            r#"{"name": "A", "email": "a@b.cd", "password": "1234567", "password_confirm": "1234567"}"#,
            422,
            "validation_failed",
        ),
        case(
            "NUL byte in the name",
            REGISTER,
            JSON,
            r#"{"name": "A\u0000B", "email": "a@b.cd", "password": "abcdefgh", "password_confirm": "abcdefgh"}"#,
            422,
            "validation_failed",
        ),
        case(
            "NUL byte in the email",
            REGISTER,
            JSON,
            r#"{"name": "A", "email": "a\u0000@b.cd", "password": "abcdefgh", "password_confirm": "abcdefgh"}"#,
            422,
            "validation_failed",
        ),
        case(
            "right-to-left override in the name",
            REGISTER,
            JSON,
            "{\"name\": \"A\u{202e}B\", \"email\": \"a@b.cd\", \"password\": \"abcdefgh\", \"password_confirm\": \"abcdefgh\"}",
            422,
            "validation_failed",
        ),
        case(
            "lone surrogate escape",
            REGISTER,
            JSON,
            r#"{"name": "\ud800", "email": "a@b.cd", "password": "abcdefgh", "password_confirm": "abcdefgh"}"#,
            400,
            "malformed_request",
        ),
        case(
            "invalid UTF-8 bytes",
            LOGIN,
            JSON,
            b"{\"email\": \"\xff\xfe\", \"password\": \"abcdefgh\"}".to_vec(),
            400,
            "malformed_request",
        ),
        case(
            "101-character name",
            REGISTER,
            JSON,
            format!(
                r#"{{"name": "{}", "email": "a@b.cd", "password": "abcdefgh", "password_confirm": "abcdefgh"}}"#,
                "n".repeat(101)
            ),
            422,
            "validation_failed",
        ),
        case(
            "email without a domain",
            REGISTER,
            JSON,
            r#"{"name": "A", "email": "ada@", "password": "abcdefgh", "password_confirm": "abcdefgh"}"#,
            422,
            "validation_failed",
        ),
        case(
            "form-encoded body",
            LOGIN,
            Some("application/x-www-form-urlencoded"),
            "email=a%40b.cd&password=abcdefgh",
            415,
            "unsupported_media_type",
        ),
        case(
            "text/plain body",
            REGISTER,
            Some("text/plain"),
            r#"{"name": "A"}"#,
            415,
            "unsupported_media_type",
        ),
        case(
            "no content type",
            LOGIN,
            None,
            r#"{"email": "a@b.cd", "password": "abcdefgh"}"#,
            415,
            "unsupported_media_type",
        ),
        case(
            "refresh body of the wrong type",
            REFRESH,
            Some("text/plain"),
            "token",
            415,
            "unsupported_media_type",
        ),
        case(
            "refresh token of the wrong type",
            REFRESH,
            JSON,
            r#"{"refresh_token": 42}"#,
            400,
            "malformed_request",
        ),
        case(
            "body over 64 KiB",
            LOGIN,
            JSON,
            huge,
            413,
            "payload_too_large",
        ),
        case(
            "deeply nested JSON",
            LOGIN,
            JSON,
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
            400,
            "malformed_request",
        ),
    ]
}

async fn malformed_requests_get_clear_client_errors(app: TestApp) {
    let cases = corpus();
    assert!(cases.len() >= 20);
    // A body refused before it is read (413) makes the server close the connection; a fresh
    // connection per case keeps the client from reusing a closed one.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for case in cases {
        let mut request = client.request(case.method.clone(), app.url(case.path));
        if let Some(ct) = case.content_type {
            request = request.header("Content-Type", ct);
        }
        let response = request.body(case.body.clone()).send().await.unwrap();
        let (status, body) = status_and_json(response).await;
        assert_eq!(status.as_u16(), case.status, "{}: {body}", case.what);
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.what);
        assert!(
            body["error"]["message"].is_string(),
            "{}: {body}",
            case.what
        );
        if case.code == "validation_failed" {
            assert!(
                body["error"]["details"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty()),
                "{}: field details expected: {body}",
                case.what
            );
        }
    }
    // None of them created an account.
    use sea_orm::{EntityTrait, PaginatorTrait};
    let users = latchkey::db::entities::user::Entity::find()
        .count(app.state.db.connection())
        .await
        .unwrap();
    assert_eq!(users, 0);
}

async fn unknown_routes_and_methods_get_json_errors(app: TestApp) {
    let response = app
        .client
        .get(app.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");

    let response = app
        .client
        .get(app.url("/api/v1/auth/login"))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let response = app
        .client
        .delete(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
