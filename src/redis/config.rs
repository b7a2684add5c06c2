//! The bridge's settings and the `redis://` URL they are read from.

use std::time::Duration;

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
    /// Reads `redis://[[user]:password@]host[:port][/db]`. The database number is
    /// accepted and ignored: Redis pub/sub channels are the same in every database.
    /// `rediss://` (TLS) and unix sockets are not supported.
    pub fn from_url(url: &str) -> Result<RedisConfig, String> {
        let rest = match url.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", _)) => return Err(format!("{url}: TLS (rediss://) is not supported; use a local tunnel")),
            Some((scheme, _)) => return Err(format!("{url}: unsupported scheme {scheme}://, expected redis://")),
            None => return Err(format!("{url}: expected redis://host[:port]")),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.split(['?', '#']).next().unwrap_or("");
        if !path.is_empty() && path.parse::<u32>().is_err() {
            return Err(format!("{url}: the path must be a database number, got /{path}"));
        }
        let mut cfg = RedisConfig::default();
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

    /// `host:port`, for logs (never the password).
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
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
        assert!(RedisConfig::from_url("rediss://h").unwrap_err().contains("TLS"));
        assert!(RedisConfig::from_url("http://h").is_err());
        assert!(RedisConfig::from_url("127.0.0.1:6379").is_err());
        assert!(RedisConfig::from_url("redis://h:port").is_err());
        assert!(RedisConfig::from_url("redis://h/x").is_err());
        assert!(RedisConfig::from_url("redis://:6379").is_err());
    }
}
