//! The bridge's settings and the `redis://` / `rediss://` URLs they are read from.

use std::path::PathBuf;
use std::time::Duration;

/// One Redis, or a Redis Cluster found from seed nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Deployment {
    /// One server (`host`, `port`): `PUBLISH` and `SUBSCRIBE`.
    #[default]
    Single,
    /// A Redis Cluster (Redis 7 or newer): the topology is read from the first seed that
    /// answers `CLUSTER SLOTS`, and each room's channels live on the shard that owns
    /// their hash slot (`SPUBLISH`, `SSUBSCRIBE`).
    Cluster {
        /// Nodes to ask for the topology (any of the cluster's nodes will do).
        seeds: Vec<Endpoint>,
    },
}

/// A Redis node's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port`, IPv6 addresses in brackets.
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where the certificates that vouch for a `rediss://` server come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsRoots {
    /// The system's CA bundle (`SSL_CERT_FILE`, or the distribution's bundle file).
    System,
    /// A PEM file of CA certificates (`--redis-ca`), instead of the system's.
    CaFile(PathBuf),
}

/// How a node tells Redis which messages it wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubscribeMode {
    /// `SUBSCRIBE <prefix><topic>` for each topic with local subscribers, `UNSUBSCRIBE`
    /// when the last one leaves: a node receives only what it delivers.
    #[default]
    PerTopic,
    /// One `PSUBSCRIBE <prefix>*`: every node receives every topic's messages and drops
    /// those nobody on it wants. Fewer commands when topics come and go very fast, more
    /// traffic as soon as nodes do not all share the same topics.
    Pattern,
}

/// Settings of a [`RedisBridge`](super::RedisBridge).
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// Redis host name or address.
    pub host: String,
    /// Redis port (default 6379).
    pub port: u16,
    /// One Redis (`host`, `port`) or a cluster (its seeds; `host` and `port` are the
    /// first of them).
    pub deployment: Deployment,
    /// TLS to Redis (`rediss://`), and the roots its certificates are checked against;
    /// `None`: plain TCP.
    pub tls: Option<TlsRoots>,
    /// `AUTH` user (Redis 6 ACLs), with `password`.
    pub username: Option<String>,
    /// `AUTH` password.
    pub password: Option<String>,
    /// Channel name prefix: topic `t` is channel `<prefix>t` (default `wsloop:`). Nodes
    /// of one cluster share it; clusters sharing a Redis use different ones.
    pub prefix: String,
    /// Per-topic subscriptions (default) or one pattern.
    pub mode: SubscribeMode,
    /// Publishes waiting for the Redis thread, at most (more are dropped and counted).
    pub queue_messages: usize,
    /// Bytes of publishes waiting for the Redis thread, at most.
    pub queue_bytes: usize,
    /// Bytes written to Redis and not yet taken by it, at most; past it the queue fills.
    pub max_output: usize,
    /// Largest payload accepted from Redis (match the server's `max_message`).
    pub max_message: usize,
    /// Give up a connection attempt after this long.
    pub connect_timeout: Duration,
    /// First wait before reconnecting; doubles on each failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// Messages kept per room in a Redis stream (`XADD MAXLEN`), with the server's
    /// `Config::history` (default 0: no streams, plain `PUBLISH`).
    pub history: usize,
    /// A room's stream expires this long after its last message (default 300 s;
    /// `None`: never).
    pub history_ttl: Option<Duration>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            host: "127.0.0.1".into(),
            port: 6379,
            deployment: Deployment::Single,
            tls: None,
            username: None,
            password: None,
            prefix: "wsloop:".into(),
            mode: SubscribeMode::PerTopic,
            queue_messages: 65_536,
            queue_bytes: 64 << 20,
            max_output: 8 << 20,
            max_message: 16 << 20,
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            history: 0,
            history_ttl: Some(Duration::from_secs(300)),
        }
    }
}

impl RedisConfig {
    /// Reads `redis://[[user]:password@]host[:port][/db]`, or `rediss://...` for TLS
    /// (checked against the system's roots; see [`RedisConfig::tls`]). The database
    /// number is accepted and ignored: Redis pub/sub channels are the same in every
    /// database. Unix sockets are not supported.
    pub fn from_url(url: &str) -> Result<RedisConfig, String> {
        let rest = match url.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!("{url}: unsupported scheme {scheme}://, expected redis:// or rediss://"))
            }
            None => return Err(format!("{url}: expected redis://host[:port]")),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.split(['?', '#']).next().unwrap_or("");
        if !path.is_empty() && path.parse::<u32>().is_err() {
            return Err(format!("{url}: the path must be a database number, got /{path}"));
        }
        let mut cfg = RedisConfig::default();
        if url.starts_with("rediss://") {
            cfg.tls = Some(TlsRoots::System);
        }
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, pass) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => ("", Some(userinfo)),
                };
                cfg.username = Some(percent_decode(user)?).filter(|u| !u.is_empty());
                cfg.password = pass.map(percent_decode).transpose()?.filter(|p| !p.is_empty());
                hostport
            }
            None => authority,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(format!("{url}: unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        cfg.host = host.to_string();
        if let Some(p) = port {
            cfg.port = p.parse().map_err(|_| format!("{url}: not a port: {p}"))?;
        }
        Ok(cfg)
    }

    /// Reads a Redis Cluster's seed nodes, `URL[,URL...]`, each as [`from_url`](Self::from_url)
    /// reads it. They must agree on the scheme and the credentials: one cluster has one
    /// ACL and one TLS setting.
    pub fn from_cluster_urls(urls: &str) -> Result<RedisConfig, String> {
        let mut seeds = Vec::new();
        let mut first: Option<RedisConfig> = None;
        for url in urls.split(',').map(str::trim) {
            if url.is_empty() {
                return Err(format!("{urls}: an empty seed URL in the list"));
            }
            let c = RedisConfig::from_url(url)?;
            if let Some(f) = &first {
                if (f.tls.is_some(), &f.username, &f.password) != (c.tls.is_some(), &c.username, &c.password) {
                    return Err(format!("{url}: every seed needs the same scheme, user and password as the first"));
                }
            }
            seeds.push(Endpoint { host: c.host.clone(), port: c.port });
            first.get_or_insert(c);
        }
        let mut cfg = first.ok_or_else(|| format!("{urls}: no seed URL"))?;
        cfg.deployment = Deployment::Cluster { seeds };
        Ok(cfg)
    }

    /// `host:port`, for logs (never the password); a cluster's seeds, comma-separated.
    pub fn server(&self) -> String {
        match &self.deployment {
            Deployment::Single => self.endpoint().server(),
            Deployment::Cluster { seeds } => {
                format!("the cluster of {}", seeds.iter().map(Endpoint::server).collect::<Vec<_>>().join(","))
            }
        }
    }

    /// The single server, or the first seed.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint { host: self.host.clone(), port: self.port }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad %-escape in the URL")?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's user or password is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = RedisConfig::from_url("redis://127.0.0.1:6379/").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.password), ("127.0.0.1", 6379, None));
        let c = RedisConfig::from_url("redis://cache.internal").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("cache.internal", 6379));
        let c = RedisConfig::from_url("redis://:s%40cret@h:7000/2").unwrap();
        assert_eq!((c.username, c.password.as_deref(), c.port), (None, Some("s@cret"), 7000));
        let c = RedisConfig::from_url("redis://app:pw@[::1]:6380").unwrap();
        assert_eq!((c.username.as_deref(), c.host.as_str(), c.port), (Some("app"), "::1", 6380));
        assert_eq!(c.server(), "[::1]:6380");
        let c = RedisConfig::from_url("rediss://app:pw@h:6380").unwrap();
        assert_eq!((c.tls, c.username.as_deref(), c.port), (Some(TlsRoots::System), Some("app"), 6380));
        assert_eq!(RedisConfig::from_url("redis://h").unwrap().tls, None);
        assert!(RedisConfig::from_url("http://h").is_err());
        assert!(RedisConfig::from_url("127.0.0.1:6379").is_err());
        assert!(RedisConfig::from_url("redis://h:port").is_err());
        assert!(RedisConfig::from_url("redis://h/x").is_err());
        assert!(RedisConfig::from_url("redis://:6379").is_err());
    }

    #[test]
    fn cluster_seed_lists() {
        let c = RedisConfig::from_cluster_urls("redis://u:p@10.0.0.1:7000, redis://u:p@10.0.0.2:7001").unwrap();
        let seeds =
            vec![Endpoint { host: "10.0.0.1".into(), port: 7000 }, Endpoint { host: "10.0.0.2".into(), port: 7001 }];
        assert_eq!(c.deployment, Deployment::Cluster { seeds });
        assert_eq!((c.host.as_str(), c.port, c.username.as_deref()), ("10.0.0.1", 7000, Some("u")));
        assert_eq!(c.server(), "the cluster of 10.0.0.1:7000,10.0.0.2:7001");
        let e = RedisConfig::from_cluster_urls("rediss://h:1,redis://h:2").unwrap_err();
        assert!(e.contains("same scheme"), "{e}");
        assert!(RedisConfig::from_cluster_urls("redis://u:a@h:1,redis://u:b@h:2").is_err());
        assert!(RedisConfig::from_cluster_urls("redis://h:1,,redis://h:2").is_err());
        assert!(RedisConfig::from_cluster_urls("redis://h:1,http://h:2").is_err());
    }
}
