//! A TCP proxy a test puts between the service and PostgreSQL or Redis, to cut the
//! connection mid-run (every open connection dropped, new ones refused) and restore it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// A proxy on a port of its own, forwarding to `target`.
pub struct Proxy {
    pub port: u16,
    target: SocketAddr,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = Self {
            port,
            target,
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, tasks) = (self.target, self.tasks.clone());
        let accept = async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                };
                tasks.lock().expect("proxy tasks").spawn(forward);
            }
        };
        self.tasks.lock().expect("proxy tasks").spawn(accept);
    }

    /// Drops every connection and stops listening: the service sees its connections break and
    /// new ones refused, as when the server goes down.
    pub fn cut(&self) {
        self.tasks.lock().expect("proxy tasks").abort_all();
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = TcpListener::bind(addr)
            .await
            .expect("the proxy's port again");
        self.serve(listener);
    }
}

/// The first address `url`'s host and port resolve to.
pub fn address_of(url: &str, default_port: u16) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let parsed = reqwest::Url::parse(url).expect("a URL");
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(default_port);
    (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolvable")
        .next()
        .expect("an address")
}
