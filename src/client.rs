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

    /// The key per-IP limits count by: the IPv4 address, or the IPv6 /64 network, since one
    /// IPv6 client commonly holds a whole /64 and could otherwise pick a new address per
    /// request.
    pub fn ip_key(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Some(IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .map_or_else(String::new, |v4| v4.to_string()),
            Some(IpAddr::V4(v4)) => v4.to_string(),
            None => "unknown".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> String {
        ClientInfo {
            ip: Some(ip.parse().unwrap()),
            user_agent: None,
        }
        .ip_key()
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_ipv4_by_address() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
    }
}
