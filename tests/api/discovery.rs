//! Other services (API.md section 10): OpenID Connect discovery read by standard verifiers,
//! `/userinfo`, and forward auth for reverse proxies, through a real nginx.

use std::{path::Path, process::Command};

use openidconnect::{
    ClientId, IssuerUrl, Nonce,
    core::{CoreIdToken, CoreIdTokenVerifier, CoreProviderMetadata},
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    backend_tests,
    helpers::{Group, TestApp, TestUser, assert_error, available, status_and_json},
};

backend_tests!(
    discovery_names_the_issuer_of_the_tokens_and_where_their_keys_are,
    the_openidconnect_crate_discovers_latchkey_and_accepts_its_access_tokens,
    pyjwt_verifies_access_tokens_from_the_issuer_url_alone,
    userinfo_answers_for_a_live_token_only,
    forward_auth_answers_204_with_the_caller_or_401,
);

async fn get_json(app: &TestApp, path: &str) -> (StatusCode, Value) {
    status_and_json(app.client.get(app.url(path)).send().await.unwrap()).await
}

/// A token with its payload changed after signing.
fn tampered(token: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["role"] = "admin".into();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

async fn discovery_names_the_issuer_of_the_tokens_and_where_their_keys_are(app: TestApp) {
    let (status, document) = get_json(&app, "/.well-known/openid-configuration").await;
    assert_eq!(status, StatusCode::OK, "{document}");
    let user = app.signed_in_user().await;
    let claims = crate::helpers::claims_of(&user.tokens().access);
    assert_eq!(document["issuer"], claims["iss"], "the tokens' iss");
    assert_eq!(
        document["issuer"],
        app.address.as_str(),
        "the public URL, by default"
    );
    assert_eq!(
        document["jwks_uri"],
        format!("{}/.well-known/jwks.json", app.address)
    );
    assert_eq!(
        document["userinfo_endpoint"],
        format!("{}/userinfo", app.address)
    );
    assert_eq!(
        document["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    for claim in [
        "sub",
        "name",
        "email",
        "email_verified",
        "role",
        "amr",
        "iss",
        "aud",
    ] {
        let listed = document["claims_supported"].as_array().unwrap();
        assert!(listed.iter().any(|c| c == claim), "{claim}");
    }
}

async fn the_openidconnect_crate_discovers_latchkey_and_accepts_its_access_tokens(app: TestApp) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let issuer = IssuerUrl::new(app.state.settings.tokens.issuer.clone()).unwrap();
    let metadata = CoreProviderMetadata::discover_async(issuer.clone(), &http)
        .await
        .expect("discovery");
    assert_eq!(metadata.issuer(), &issuer);
    let audience = ClientId::new(app.state.settings.tokens.audience.clone());
    let verifier =
        CoreIdTokenVerifier::new_public_client(audience, issuer, metadata.jwks().clone());
    let user = app.signed_in_user().await;
    let accept_any_nonce = |_: Option<&Nonce>| Ok(());
    let token: CoreIdToken = user.tokens().access.parse().unwrap();
    let claims = token
        .claims(&verifier, accept_any_nonce)
        .expect("a valid token");
    assert_eq!(claims.subject().as_str(), user.user_id().to_string());
    let forged: CoreIdToken = tampered(&user.tokens().access).parse().unwrap();
    assert!(forged.claims(&verifier, accept_any_nonce).is_err());
    // A refresh token is signed by a key that is not published: never accepted.
    let refresh: CoreIdToken = user.tokens().refresh.parse().unwrap();
    assert!(refresh.claims(&verifier, accept_any_nonce).is_err());
}

/// PyJWT, as a Python service would use it: the JWKS URL from discovery, the key by `kid`,
/// issuer and audience checked, RS256 pinned.
const PYJWT_VERIFIER: &str = r#"
import json, sys, urllib.request
import jwt
issuer, audience, token = sys.argv[1], sys.argv[2], sys.argv[3]
config = json.load(urllib.request.urlopen(issuer + "/.well-known/openid-configuration"))
assert config["issuer"] == issuer
key = jwt.PyJWKClient(config["jwks_uri"]).get_signing_key_from_jwt(token)
try:
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer)
except jwt.InvalidTokenError as err:
    print("refused:", type(err).__name__)
    sys.exit(3)
print(claims["sub"])
"#;

async fn pyjwt_verifies_access_tokens_from_the_issuer_url_alone(app: TestApp) {
    if !available(Group::PyJwt) {
        return;
    }
    let user = app.signed_in_user().await;
    let settings = &app.state.settings;
    let run = |token: String| {
        let (issuer, audience) = (
            settings.tokens.issuer.clone(),
            settings.tokens.audience.clone(),
        );
        tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .args(["-c", PYJWT_VERIFIER, &issuer, &audience, &token])
                .output()
                .expect("python3")
        })
    };
    let accepted = run(user.tokens().access.clone()).await.unwrap();
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&accepted.stdout).trim(),
        user.user_id().to_string()
    );
    let refused = run(tampered(&user.tokens().access)).await.unwrap();
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
}

async fn userinfo_answers_for_a_live_token_only(app: TestApp) {
    let user = app.signed_in_user().await;
    let userinfo = || {
        app.client
            .get(app.url("/userinfo"))
            .bearer_auth(&user.tokens().access)
            .send()
    };
    let (status, info) = status_and_json(userinfo().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["sub"], user.user_id().to_string());
    assert_eq!(info["email"], user.email);
    assert_eq!(info["name"], user.name);
    assert_eq!(info["email_verified"], false);
    assert_eq!(info["role"], "user");
    app.logout(&user.tokens().access).await;
    assert_error(
        userinfo().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn check(
    app: &TestApp,
    user: Option<&TestUser>,
    cookie: bool,
    method: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.get(app.url("/api/v1/auth/check"));
    if let Some(user) = user {
        request = if cookie {
            request.header("cookie", format!("access_token={}", user.tokens().access))
        } else {
            request.bearer_auth(&user.tokens().access)
        };
    }
    if let Some(method) = method {
        request = request.header("x-forwarded-method", method);
    }
    request.send().await.unwrap()
}

async fn forward_auth_answers_204_with_the_caller_or_401(app: TestApp) {
    let user = app.signed_in_user().await;
    for cookie in [false, true] {
        let response = check(&app, Some(&user), cookie, None).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-auth-user-id"), user.user_id().to_string());
        assert_eq!(header("x-auth-role"), "user");
        assert_eq!(header("x-auth-session-id"), user.tokens().session_id);
        assert_eq!(header("x-auth-email"), user.email);
    }
    // A cookie on a proxied POST from no allowed origin is a CSRF attempt.
    let response = check(&app, Some(&user), true, Some("POST")).await;
    assert_error(response, StatusCode::FORBIDDEN, "csrf_rejected").await;
    let response = check(&app, None, false, None).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
    // Revocation is seen at once.
    app.logout(&user.tokens().access).await;
    let response = check(&app, Some(&user), false, None).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

/// nginx's `auth_request` in front of an upstream, asking Latchkey about every request.
fn nginx_config(dir: &Path, port: u16, upstream: u16, latchkey: u16) -> String {
    let dir = dir.display();
    // As root, nginx's workers would switch to another user that cannot use the temp dir.
    let user = if euid_is_root() { "user root;" } else { "" };
    format!(
        r#"{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_latchkey;
      auth_request_set $auth_user $upstream_http_x_auth_user_id;
      auth_request_set $auth_role $upstream_http_x_auth_role;
      proxy_set_header X-Auth-User-Id $auth_user;
      proxy_set_header X-Auth-Role $auth_role;
      proxy_pass http://127.0.0.1:{upstream};
    }}
    location = /_latchkey {{
      internal;
      proxy_pass http://127.0.0.1:{latchkey}/api/v1/auth/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
    }}
  }}
}}
"#
    )
}

fn euid_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers with the user id nginx passed it.
async fn echo_upstream() -> u16 {
    use poem::{handler, listener::TcpListener};
    #[handler]
    fn echo(req: &poem::Request) -> String {
        let user = req
            .headers()
            .get("x-auth-user-id")
            .and_then(|v| v.to_str().ok());
        format!("upstream saw user {}", user.unwrap_or("none"))
    }
    let port = free_port();
    let app = poem::Route::new().at("/*", echo);
    let server = poem::Server::new(TcpListener::bind(format!("127.0.0.1:{port}")));
    tokio::spawn(server.run(app));
    port
}

mod nginx_forward_auth_lets_only_live_tokens_reach_the_upstream {
    use super::*;
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        crate::require!(Nginx);
        let app = TestApp::spawn(Backend::Embedded).await;
        let dir = tempfile::tempdir().unwrap();
        let (port, upstream) = (free_port(), echo_upstream().await);
        let latchkey = app.address.rsplit(':').next().unwrap().parse().unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            nginx_config(dir.path(), port, upstream, latchkey),
        )
        .unwrap();
        let _nginx = Nginx(
            std::process::Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nginx starts"),
        );
        let url = format!("http://127.0.0.1:{port}/orders");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not listen");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let user = app.signed_in_user().await;
        let client = reqwest::Client::new();
        let response = client
            .get(&url)
            .bearer_auth(&user.tokens().access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.text().await.unwrap(),
            format!("upstream saw user {}", user.user_id())
        );
        // A client cannot choose the user the upstream sees: nginx replaces the header.
        let spoofed = client
            .get(&url)
            .bearer_auth(&user.tokens().access)
            .header("X-Auth-User-Id", uuid::Uuid::new_v4().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            spoofed.text().await.unwrap(),
            format!("upstream saw user {}", user.user_id())
        );
        // No token, a forged one, a revoked one: nginx answers 401 and the upstream sees nothing.
        assert_eq!(
            client.get(&url).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        let forged = client
            .get(&url)
            .bearer_auth(tampered(&user.tokens().access))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
        app.logout(&user.tokens().access).await;
        let revoked = client
            .get(&url)
            .bearer_auth(&user.tokens().access)
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    }

    /// nginx's master; stopped (with its workers) when the test ends, however it ends.
    struct Nginx(std::process::Child);

    impl Drop for Nginx {
        fn drop(&mut self) {
            // SIGTERM: the master stops its workers before it exits (SIGKILL would orphan them).
            let pid = self.0.id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            let _ = self.0.wait();
        }
    }
}
