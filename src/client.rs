//! Who is calling, as the HTTP layer determined it: what the flows record with sessions and
//! audit events, and what per-client limits count by.

use std::net::IpAddr;

/// The client of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's IP (the socket peer, or what a trusted proxy forwarded).
    pub ip: Option<IpAddr>,
    /// The `User-Agent`, trimmed and cut to a bounded length.
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// A client that is not on the network: the command line.
    pub fn local() -> Self {
        Self::default()
    }

    /// The key per-IP limits count by.
    pub fn ip_key(&self) -> String {
        self.ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "unknown".into())
    }
}
