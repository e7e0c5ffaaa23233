//! Redis servers the tests start themselves from the `redis-server` binary: a plain one a test
//! can stop ([`OwnRedis`]), one speaking TLS with a throwaway CA ([`TLS_REDIS`]), and Redis
//! Clusters of cluster-enabled nodes joined by `redis-cli --cluster create` (the shared
//! [`CLUSTER`], or a test's own [`Cluster::start`]). Each server runs in a directory of its
//! own; none outlives the test process (see [`spawn`] and [`keep_until_exit`]).

use std::{
    io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{LazyLock, Mutex, Once, mpsc},
    time::{Duration, Instant},
};

/// The TLS Redis shared by the tests of one process: `rediss://127.0.0.1:PORT` and its CA.
pub static TLS_REDIS: LazyLock<Result<TlsRedis, String>> = LazyLock::new(TlsRedis::start);

/// The Redis Cluster shared by the tests of one process: 3 primaries, each with a replica. A
/// generous node timeout: a busy test machine must not make it fail over by itself.
pub static CLUSTER: LazyLock<Result<Cluster, String>> =
    LazyLock::new(|| Cluster::start(3, 1, 5000, false).map(Cluster::keep_until_exit));

/// A free TCP port on 127.0.0.1 (free when asked: the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` with stdin, stdout and stderr on /dev/null (an inherited pipe keeps the
/// test harness waiting), from one thread that lives as long as the test process, with
/// `PR_SET_PDEATHSIG`: the kernel kills the server when that thread ends, that is with the
/// process, even for servers kept in statics (never dropped) or when the tests are killed.
pub fn spawn(mut command: Command) -> io::Result<Child> {
    static SPAWNER: LazyLock<Mutex<mpsc::Sender<SpawnRequest>>> = LazyLock::new(|| {
        let (requests, received) = mpsc::channel::<SpawnRequest>();
        std::thread::spawn(move || {
            for (mut command, reply) in received {
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(requests)
    });
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    let gone = || io::Error::other("the spawning thread is gone");
    SPAWNER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// Servers and directories of statics (never dropped), removed when the test process exits.
static AT_EXIT: Mutex<Vec<(Vec<u32>, PathBuf)>> = Mutex::new(Vec::new());

/// Kills `pids` and removes `dir` when the test process exits normally.
fn keep_until_exit(pids: Vec<u32>, dir: tempfile::TempDir) {
    static REGISTER: Once = Once::new();
    extern "C" fn clean_up() {
        let kept = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
        for (pids, dir) in kept {
            for pid in pids {
                // SAFETY: plain system calls on processes this test process started.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
                }
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    // SAFETY: registers a handler that only kills our children and removes our directories.
    REGISTER.call_once(|| unsafe {
        libc::atexit(clean_up);
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((pids, dir.keep()));
}

/// One `redis-server`, killed when dropped.
pub struct RedisProcess {
    child: Child,
    pub port: u16,
}

impl RedisProcess {
    /// Starts a server on `port` in `dir` (its working directory, where it writes its log
    /// and, in a cluster, `nodes.conf`) and waits until it answers.
    fn start(
        dir: &Path,
        port: u16,
        certs: Option<&TestCerts>,
        extra: &[&str],
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut command = Command::new("redis-server");
        command.current_dir(dir).args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "redis.log",
        ]);
        let port_arg = port.to_string();
        match certs {
            Some(certs) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port_arg,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&certs.cert)
                .arg("--tls-key-file")
                .arg(&certs.key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca),
            None => command.args(["--port", &port_arg]),
        };
        command.args(extra);
        let child = spawn(command).map_err(|e| format!("`redis-server` does not start: {e}"))?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(port, certs, &["ping"]).as_deref() != Ok("PONG") {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                return Err(format!("redis-server on port {port} never answered: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the server ends at once, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `redis-cli ARGS` against 127.0.0.1:`port` prints, trimmed.
pub fn cli(port: u16, certs: Option<&TestCerts>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(certs) = certs {
        command.arg("--tls").arg("--cacert").arg(&certs.ca);
    }
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`redis-cli` does not run: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "redis-cli {}: {text} {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A throwaway CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
pub struct TestCerts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    pub fn write(dir: &Path) -> Result<Self, String> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let error = |e: rcgen::Error| format!("test certificates: {e}");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Latchkey test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(error)?)
            .map_err(error)?;
        let key = KeyPair::generate().map_err(error)?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &*ca).map_err(error)?;
        let certs = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("redis.pem"),
            key: dir.join("redis.key"),
        };
        for (path, pem) in [
            (&certs.ca, ca.pem()),
            (&certs.cert, cert.pem()),
            (&certs.key, key.serialize_pem()),
        ] {
            std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(certs)
    }
}

/// A Redis speaking TLS only, with a certificate of a CA made for it.
pub struct TlsRedis {
    pub url: String,
    /// The CA's certificate: what `REDIS_CA_CERT` names.
    pub ca: PathBuf,
    _server: RedisProcess,
}

impl TlsRedis {
    fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let certs = TestCerts::write(dir.path())?;
        let port = free_port();
        let server = RedisProcess::start(&dir.path().join("redis"), port, Some(&certs), &[])?;
        keep_until_exit(vec![server.pid()], dir);
        Ok(Self {
            url: format!("rediss://127.0.0.1:{port}"),
            ca: certs.ca,
            _server: server,
        })
    }
}

/// A Redis Cluster on 127.0.0.1, each node in a directory of its own.
pub struct Cluster {
    nodes: Vec<RedisProcess>,
    certs: Option<TestCerts>,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `primaries` x (1 + `replicas`) cluster-enabled nodes, joins them with
    /// `redis-cli --cluster create` and waits until every node says `cluster_state:ok` and
    /// every replica is in sync. A primary whose peers miss it for `node_timeout_ms` fails
    /// over to its replica.
    pub fn start(
        primaries: usize,
        replicas: usize,
        node_timeout_ms: u64,
        tls: bool,
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let certs = if tls {
            Some(TestCerts::write(dir.path())?)
        } else {
            None
        };
        let timeout = node_timeout_ms.to_string();
        let mut nodes = Vec::new();
        for i in 0..primaries * (1 + replicas) {
            let bus = free_port().to_string();
            let mut extra = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
                "--cluster-port",
                &bus,
            ];
            if tls {
                extra.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
            let node_dir = dir.path().join(format!("node-{i}"));
            nodes.push(RedisProcess::start(
                &node_dir,
                free_port(),
                certs.as_ref(),
                &extra,
            )?);
        }
        let cluster = Self {
            nodes,
            certs,
            dir: Some(dir),
        };
        let addresses: Vec<String> = cluster.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        let replicas = replicas.to_string();
        create.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        cli(cluster.nodes[0].port, cluster.certs.as_ref(), &create)?;
        cluster.wait_until_healthy(
            &cluster.ports().collect::<Vec<_>>(),
            Duration::from_secs(30),
        )?;
        Ok(cluster)
    }

    /// Kept for the rest of the test process (a shared cluster in a static).
    fn keep_until_exit(mut self) -> Self {
        if let Some(dir) = self.dir.take() {
            keep_until_exit(self.nodes.iter().map(RedisProcess::pid).collect(), dir);
        }
        self
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().map(|node| node.port)
    }

    /// `REDIS_URL` for this cluster, naming every node.
    pub fn url(&self) -> String {
        let scheme = if self.certs.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        let nodes: Vec<String> = self.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("{scheme}://{}", nodes.join(","))
    }

    /// The CA of a TLS cluster (`REDIS_CA_CERT`).
    pub fn ca(&self) -> Option<PathBuf> {
        self.certs.as_ref().map(|certs| certs.ca.clone())
    }

    /// Waits until each of `ports` says `cluster_state:ok`, knows every live node, and, for a
    /// replica, has its link to its primary up.
    pub fn wait_until_healthy(&self, ports: &[u16], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        for &port in ports {
            let certs = self.certs.as_ref();
            loop {
                let healthy = cli(port, certs, &["cluster", "info"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
                    && cli(port, certs, &["info", "replication"]).is_ok_and(|info| {
                        info.contains("role:master") || info.contains("master_link_status:up")
                    });
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    let info = cli(port, certs, &["cluster", "info"]).unwrap_or_else(|e| e);
                    return Err(format!("cluster node {port} never became healthy: {info}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The port of the primary serving `key`'s slot, as node `via` sees it.
    pub fn primary_for(&self, key: &str) -> Result<u16, String> {
        let via = self.nodes[0].port;
        let certs = self.certs.as_ref();
        let slot: u16 = cli(via, certs, &["cluster", "keyslot", key])?
            .parse()
            .map_err(|e| format!("keyslot: {e}"))?;
        let nodes = cli(via, certs, &["cluster", "nodes"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                from.parse().is_ok_and(|from: u16| from <= slot)
                    && to.parse().is_ok_and(|to: u16| slot <= to)
            });
            if fields.len() > 8 && fields[2].contains("master") && serves {
                let port = fields[1].split(['@', ':']).nth(1).unwrap_or_default();
                return port
                    .parse()
                    .map_err(|e| format!("cluster nodes {line:?}: {e}"));
            }
        }
        Err(format!("no primary serves slot {slot}: {nodes}"))
    }

    /// Kills the node on `port` (SIGKILL, as in a crash); returns the ports left.
    pub fn kill(&mut self, port: u16) -> Vec<u16> {
        for node in self.nodes.iter_mut().filter(|node| node.port == port) {
            node.kill();
        }
        self.nodes.retain(|node| node.port != port);
        self.ports().collect()
    }
}

/// A plain Redis of one test's own, on a free port, that the test can stop and restart.
pub struct OwnRedis {
    server: Option<RedisProcess>,
    port: u16,
    dir: tempfile::TempDir,
    pub url: String,
}

impl OwnRedis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut redis = Self {
            server: None,
            port,
            dir,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.restart();
        redis
    }

    /// A new (empty) Redis on the port of this one, after stopping it.
    pub fn restart(&mut self) {
        self.stop();
        let server = RedisProcess::start(self.dir.path(), self.port, None, &[]);
        self.server = Some(server.expect("redis-server"));
    }

    pub fn stop(&mut self) {
        self.server.take();
    }
}
