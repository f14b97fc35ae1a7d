//! One connection type for the three topologies: a node's multiplexed connection (standalone,
//! or the primary the sentinels named) or a cluster connection, which routes each command by
//! its key's slot and follows `MOVED` and `ASK`. Lua scripts, `BLPOP` and the rest run on either;
//! what differs is here: `WAIT` must reach the primary that took the write, and a listing must
//! `SCAN` every primary of a cluster.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr,
};
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::url::Ack;

/// A connection to one node (standalone, or the primary the sentinels name) or to a cluster.
/// Cheap to clone: the clones share the connection.
#[derive(Clone)]
pub enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Node(_) => "Conn::Node",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Changes the reply timeout of a node's connection; a cluster connection keeps the one it
    /// was opened with.
    pub fn set_response_timeout(&mut self, timeout: Duration) {
        if let Conn::Node(conn) = self {
            conn.set_response_timeout(timeout);
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT N timeout` on the node that holds `key`: how many replicas have every write this
    /// connection made there. On a cluster it goes to the primary of the key's slot, the node
    /// that took the write (the crate would send it to every primary).
    pub async fn acknowledged(&mut self, key: &str, ack: Ack) -> RedisResult<i64> {
        let mut wait = ::redis::cmd("WAIT");
        wait.arg(ack.replicas)
            .arg(u64::try_from(ack.timeout.as_millis()).unwrap_or(u64::MAX));
        match self {
            Conn::Node(conn) => wait.query_async(conn).await,
            Conn::Cluster(conn) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let answer = conn
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                ::redis::from_redis_value(answer).map_err(RedisError::from)
            }
        }
    }

    /// Every key matching `pattern`, from every primary of a cluster or from the one node.
    /// Bytes, not strings: one key that is not UTF-8 must not fail the whole listing.
    pub async fn scan_all(&mut self, pattern: &str, count: u32) -> RedisResult<Vec<Vec<u8>>> {
        let nodes = match self {
            Conn::Node(_) => vec![None],
            Conn::Cluster(conn) => primaries(conn).await?.into_iter().map(Some).collect(),
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = ::redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(count);
                let (next, batch): (u64, Vec<Vec<u8>>) = match (&mut *self, &node) {
                    (Conn::Cluster(conn), Some((host, port))) => {
                        let routing = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        let answer = conn
                            .route_command(scan, RoutingInfo::SingleNode(routing))
                            .await?;
                        ::redis::from_redis_value(answer).map_err(RedisError::from)?
                    }
                    (conn, _) => scan.query_async(conn).await?,
                };
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(keys)
    }
}

/// The primaries of a cluster, as the crate's slot map has them: a PING to every primary
/// answers with one entry per address.
async fn primaries(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let answer = conn
        .route_command(
            ::redis::cmd("PING"),
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await?;
    let Value::Map(entries) = answer else {
        return Err(RedisError::from((
            ::redis::ErrorKind::Parse,
            "unexpected answer listing the cluster's primaries",
        )));
    };
    let mut nodes = Vec::new();
    for (addr, _) in entries {
        let addr: String = ::redis::from_redis_value(addr).map_err(RedisError::from)?;
        let parsed = addr
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)));
        match parsed {
            Some(node) => nodes.push(node),
            None => {
                return Err(RedisError::from((
                    ::redis::ErrorKind::Parse,
                    "unexpected address in the cluster's slot map",
                )))
            }
        }
    }
    Ok(nodes)
}
