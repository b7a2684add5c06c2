//! A Redis Cluster's topology: which primary owns which hash slots, read with
//! `CLUSTER SLOTS` (Redis 3 to 7; `CLUSTER SHARDS` says the same in a deeper reply).
//!
//! ```text
//! *N                                   one entry per range of slots
//!   *M  :start :end                    the range
//!       *[ $host :port $id [*meta] ]   its primary
//!       *[ ... ] ...                   its replicas
//! ```

use super::blocking::Blocking;
use super::resp::{self, Limits, Value};
use super::slot::SLOTS;
use super::{Endpoint, RedisConfig, TlsClient};
use std::time::Duration;

/// A range of slots and the nodes that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary: Endpoint,
    pub replicas: Vec<Endpoint>,
}

/// What a `CLUSTER SLOTS` reply may make us buffer: 16384 ranges at most, nodes with
/// their metadata maps four arrays deep.
pub(crate) const LIMITS: Limits =
    Limits { max_bulk: 1024, max_array: SLOTS, max_depth: 4, max_line: 1024, max_reply: 16 << 20 };

/// Asks `at` for the topology.
pub(crate) fn fetch(
    cfg: &RedisConfig,
    tls: Option<&TlsClient>,
    at: &Endpoint,
    timeout: Duration,
) -> Result<Vec<SlotRange>, String> {
    let mut conn = Blocking::open(cfg, tls, at, timeout)?;
    let mut cmd = Vec::new();
    resp::command(&mut cmd, 2);
    resp::arg(&mut cmd, &[b"CLUSTER"]);
    resp::arg(&mut cmd, &[b"SLOTS"]);
    conn.call(&cmd, &LIMITS, |v| parse(&v, at))
}

/// Reads a `CLUSTER SLOTS` reply from `asked`. An empty host means `asked`'s (Redis's
/// convention); a range whose primary is unknown (`?`) is left out.
pub(crate) fn parse(v: &Value<'_>, asked: &Endpoint) -> Result<Vec<SlotRange>, String> {
    let ranges = match v {
        Value::Array(Some(r)) => r,
        Value::Error(e) => return Err(format!("CLUSTER SLOTS: {}", String::from_utf8_lossy(e))),
        other => return Err(format!("CLUSTER SLOTS: unexpected reply {other:?}")),
    };
    let node = |v: &Value<'_>| -> Result<Option<Endpoint>, String> {
        let Value::Array(Some(n)) = v else { return Err(format!("CLUSTER SLOTS: bad node {v:?}")) };
        let (Some(host), Some(Value::Int(port))) = (n.first().and_then(Value::bytes), n.get(1)) else {
            return Err(format!("CLUSTER SLOTS: bad node {v:?}"));
        };
        let port = u16::try_from(*port).map_err(|_| format!("CLUSTER SLOTS: bad port {port}"))?;
        let host = std::str::from_utf8(host).map_err(|_| "CLUSTER SLOTS: a host that is not UTF-8".to_string())?;
        Ok(match host {
            "?" => None,
            "" => Some(Endpoint { host: asked.host.clone(), port }),
            h => Some(Endpoint { host: h.to_string(), port }),
        })
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(Some(items)) = r else { return Err(format!("CLUSTER SLOTS: bad range {r:?}")) };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(primary)) =
            (items.first(), items.get(1), items.get(2))
        else {
            return Err(format!("CLUSTER SLOTS: bad range {r:?}"));
        };
        let slot = |n: i64| u16::try_from(n).ok().filter(|&s| usize::from(s) < SLOTS);
        let (Some(start), Some(end)) = (slot(*start), slot(*end)) else {
            return Err(format!("CLUSTER SLOTS: slots {start}-{end} out of range"));
        };
        if start > end {
            return Err(format!("CLUSTER SLOTS: slots {start}-{end} out of order"));
        }
        let Some(primary) = node(primary)? else { continue };
        let replicas = items[3..].iter().map(node).collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect();
        out.push(SlotRange { start, end, primary, replicas });
    }
    if out.is_empty() {
        return Err("CLUSTER SLOTS: no slot is served (is the cluster created?)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::resp::Status;

    #[test]
    fn reads_a_redis_7_reply() {
        // Two ranges as Redis 7 sends them: node ids, an empty metadata map, one replica.
        let reply = b"*2\r\n\
            *4\r\n:0\r\n:8191\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*0\r\n*4\r\n$0\r\n\r\n:7003\r\n$2\r\nid\r\n*0\r\n\
            *3\r\n:8192\r\n:16383\r\n*3\r\n$4\r\nhost\r\n:7001\r\n$2\r\nid\r\n";
        let Ok(Status::Complete((v, n))) = resp::parse(reply, &LIMITS) else { panic!() };
        assert_eq!(n, reply.len());
        let asked = Endpoint { host: "seed".into(), port: 1 };
        let t = parse(&v, &asked).unwrap();
        let ep = |h: &str, p| Endpoint { host: h.into(), port: p };
        assert_eq!(
            t,
            [
                SlotRange { start: 0, end: 8191, primary: ep("127.0.0.1", 7000), replicas: vec![ep("seed", 7003)] },
                SlotRange { start: 8192, end: 16383, primary: ep("host", 7001), replicas: vec![] },
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_a_topology() {
        let asked = Endpoint { host: "seed".into(), port: 1 };
        let e = parse(&Value::Error(b"ERR This instance has cluster support disabled"), &asked).unwrap_err();
        assert!(e.contains("cluster support disabled"), "{e}");
        assert!(parse(&Value::Array(Some(vec![])), &asked).unwrap_err().contains("no slot"));
        let bad = Value::Array(Some(vec![Value::Array(Some(vec![Value::Int(5), Value::Int(16384)]))]));
        assert!(parse(&bad, &asked).is_err());
    }
}
