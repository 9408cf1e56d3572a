//! A genuine mongod 6.0 as a single-node replica set (transactions and change streams work)
//! on a free loopback port.

use std::path::PathBuf;
use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::options::ClientOptions;

use crate::error::{Error, Result};
use crate::net::{free_port, wait_ready};
use crate::process::ServiceProcess;
use crate::rundir::RunDir;
use crate::tools;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const REPLICA_SET: &str = "rs0";

/// A replica-set member on loopback with small caches and journal files.
fn mongod_args(dbpath: &std::path::Path, port: u16, set: &str) -> Vec<std::ffi::OsString> {
    vec![
        "--dbpath".into(),
        dbpath.as_os_str().to_owned(),
        "--bind_ip".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string().into(),
        "--replSet".into(),
        set.into(),
        "--wiredTigerCacheSizeGB".into(),
        "0.25".into(),
        "--setParameter".into(),
        "diagnosticDataCollectionEnabled=false".into(),
        // The default journal preallocates ~300 MB per data directory.
        "--wiredTigerEngineConfigString".into(),
        "log=(file_max=16MB,prealloc=false)".into(),
    ]
}

#[derive(Debug)]
pub struct Mongod {
    process: ServiceProcess,
    port: u16,
    dbpath: PathBuf,
}

impl Mongod {
    /// Starts mongod, initiates the replica set and waits until it is a writable primary.
    pub async fn start(run: &RunDir) -> Result<Self> {
        let binary = tools::mongod()?;
        let dir = run.sub("mongo")?;
        let dbpath = run.sub("mongo/db")?;
        let port = free_port()?;
        let process = ServiceProcess::spawn("mongod", &binary, mongod_args(&dbpath, port, REPLICA_SET), &dir)?;
        let mut mongod = Self { process, port, dbpath };
        mongod.wait_ready().await?;
        Ok(mongod)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let direct = format!("mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=1000", self.port);
        let options = ClientOptions::parse(&direct).await?;
        let client = mongodb::Client::with_options(options)?;
        let admin = client.database("admin");
        let port = self.port;
        wait_ready(&mut self.process, READY_TIMEOUT, || {
            let admin = admin.clone();
            async move {
                let hello = admin.run_command(doc! { "hello": 1 }).await.map_err(|e| e.to_string())?;
                if hello.get_bool("isWritablePrimary").unwrap_or(false) {
                    return Ok(());
                }
                // No replica set config yet (fresh dbpath): initiate it. A restarted mongod
                // keeps its config and only needs time to elect itself.
                if hello.get_str("setName").is_err() {
                    let config = doc! {
                        "_id": REPLICA_SET,
                        "members": [{ "_id": 0, "host": format!("127.0.0.1:{port}") }],
                    };
                    let _ = admin.run_command(doc! { "replSetInitiate": config }).await;
                }
                Err("not yet a writable primary".to_owned())
            }
        })
        .await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    pub fn dbpath(&self) -> &std::path::Path {
        &self.dbpath
    }

    /// A replica-set URI, as a worker would use.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet={REPLICA_SET}", self.port)
    }

    pub async fn client(&self) -> Result<mongodb::Client> {
        Ok(mongodb::Client::with_uri_str(self.uri()).await?)
    }

    /// `hello` as the server answers it.
    pub async fn hello(&self) -> Result<Document> {
        let client = self.client().await?;
        client.database("admin").run_command(doc! { "hello": 1 }).await.map_err(Error::from)
    }

    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(20));
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// mongod freezes with its connections open ([`ServiceProcess::freeze`]).
    pub fn freeze(&self) -> Result<()> {
        self.process.freeze()
    }

    /// Back from [`Mongod::freeze`].
    pub fn thaw(&self) -> Result<()> {
        self.process.thaw()
    }

    /// Starts again with the same dbpath and port; waits for a writable primary.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.restart()?;
        self.wait_ready().await
    }
}

/// Three genuine mongod processes as one replica set (`rs3`) on loopback: writes with the
/// default majority write concern survive the loss of the primary, and an election (made
/// quick here: 2 s election timeout) picks a new one.
#[derive(Debug)]
pub struct MongoReplicaSet {
    members: Vec<(ServiceProcess, u16)>,
}

pub const REPLICA_SET_3: &str = "rs3";

impl MongoReplicaSet {
    pub async fn start(run: &RunDir) -> Result<Self> {
        let binary = tools::mongod()?;
        let mut members = Vec::new();
        for i in 0..3 {
            let dir = run.sub(&format!("mongo-rs-{i}"))?;
            let dbpath = run.sub(&format!("mongo-rs-{i}/db"))?;
            let port = free_port()?;
            let args = mongod_args(&dbpath, port, REPLICA_SET_3);
            members.push((ServiceProcess::spawn(&format!("mongod-{i}"), &binary, args, &dir)?, port));
        }
        let set = Self { members };
        set.initiate().await?;
        Ok(set)
    }

    fn direct(port: u16) -> String {
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000")
    }

    async fn initiate(&self) -> Result<()> {
        let first = self.members[0].1;
        let client = mongodb::Client::with_options(ClientOptions::parse(Self::direct(first)).await?)?;
        let admin = client.database("admin");
        let hosts: Vec<Document> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, (_, port))| doc! { "_id": i as i32, "host": format!("127.0.0.1:{port}") })
            .collect();
        let config = doc! {
            "_id": REPLICA_SET_3,
            "members": hosts,
            "settings": { "electionTimeoutMillis": 2000, "heartbeatIntervalMillis": 500 },
        };
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            // Retried until every member listens; "already initialized" means an earlier try took.
            match admin.run_command(doc! { "replSetInitiate": config.clone() }).await {
                Ok(_) => break,
                Err(e) if e.to_string().contains("already initialized") => break,
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(Error::Other(format!("replSetInitiate: {e}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        self.wait_primary(None).await.map(|_| ())
    }

    /// The replica-set URI with every member, as a worker would use.
    pub fn uri(&self) -> String {
        let hosts: Vec<String> = self.members.iter().map(|(_, port)| format!("127.0.0.1:{port}")).collect();
        format!("mongodb://{}/?replicaSet={REPLICA_SET_3}", hosts.join(","))
    }

    pub async fn client(&self) -> Result<mongodb::Client> {
        Ok(mongodb::Client::with_uri_str(self.uri()).await?)
    }

    /// Waits until some member other than `not` is a writable primary with a majority of the
    /// set up; returns its index.
    pub async fn wait_primary(&self, not: Option<usize>) -> Result<usize> {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            for (i, (process, port)) in self.members.iter().enumerate() {
                if Some(i) == not || process.pid().is_none() {
                    continue;
                }
                let Ok(options) = ClientOptions::parse(Self::direct(*port)).await else { continue };
                let Ok(client) = mongodb::Client::with_options(options) else { continue };
                if let Ok(hello) = client.database("admin").run_command(doc! { "hello": 1 }).await
                    && hello.get_bool("isWritablePrimary").unwrap_or(false)
                {
                    return Ok(i);
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Other("no writable primary within 60 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some((process, _)) = self.members.get_mut(i) {
            process.kill();
        }
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        match self.members.get_mut(i) {
            Some((process, _)) => process.restart(),
            None => Err(Error::Other(format!("no member {i}"))),
        }
    }
}

/// The pipeline's event collections.
pub const EVENT_COLLECTIONS: [&str; 2] = ["gpu_metrics", "token_usage"];

/// Documents in the two event collections of `db`.
pub async fn event_count(db: &mongodb::Database) -> Result<u64> {
    let mut total = 0;
    for c in EVENT_COLLECTIONS {
        total += db.collection::<Document>(c).count_documents(doc! {}).await?;
    }
    Ok(total)
}

/// Every `_id` in the two event collections of `db`; an `_id` seen twice is an error (it
/// cannot happen within one collection, so it would be an event written into both).
pub async fn event_ids(db: &mongodb::Database) -> Result<std::collections::HashSet<String>> {
    use futures::TryStreamExt;
    let mut stored = std::collections::HashSet::new();
    for c in EVENT_COLLECTIONS {
        let mut cursor = db.collection::<Document>(c).find(doc! {}).projection(doc! { "_id": 1 }).await?;
        while let Some(d) = cursor.try_next().await? {
            let id = d.get_str("_id").map_err(|e| Error::Other(format!("{c}: _id: {e}")))?.to_owned();
            if !stored.insert(id.clone()) {
                return Err(Error::Other(format!("event {id} stored twice")));
            }
        }
    }
    Ok(stored)
}
