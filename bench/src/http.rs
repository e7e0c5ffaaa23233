//! The load generator's HTTP/1.1 client: hyper's connection API, kept-alive connections
//! reused, and nothing else (no redirects, cookie jar, proxy lookup or decompression). The
//! generator shares its CPU with PostgreSQL and Redis, so every microsecond it spends per
//! request is taken from the services under test; a general-purpose client (reqwest) cost
//! about twice as much per request here.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, StatusCode,
    client::conn::http1::{self, SendRequest},
    header,
};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A client for one server; cheap to clone.
#[derive(Clone)]
pub struct Http(Arc<Inner>);

struct Inner {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// A response: its status and whole body.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Self(Arc::new(Inner {
            addr,
            host: addr.to_string(),
            idle: Mutex::new(Vec::new()),
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// An idle kept-alive connection, or a new one.
    async fn connection(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self
                .0
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(conn) if !conn.is_closed() => return Ok(conn),
                Some(_closed) => continue,
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(self.0.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut conn = self.connection().await?;
        conn.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.0.host);
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(serde_json::to_vec(value)?))
            }
            None => Full::new(Bytes::new()),
        };
        let response = conn.send_request(request.body(body)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        self.0
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        Ok(Reply { status, body })
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, bearer, None).await
    }

    pub async fn post(&self, path: &str, json: &Value) -> anyhow::Result<Reply> {
        self.send(Method::POST, path, None, Some(json)).await
    }
}
