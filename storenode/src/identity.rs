//! Who this storenode is: its node id, the id of the cluster its data
//! belongs to, and the random identity of its data directory, kept together
//! in `DATA_DIR/identity.toml` (written once, fsynced, renamed into place).
//!
//! With placement, a node started without an id gets a fresh one when it
//! first registers, and keeps it here; a restart registers under it again.
//! Placement refuses a registration that claims a known id with another
//! identity (two processes never share a node id: a newcomer given an old
//! node's id would be handed that node's replicas), and one whose data
//! directory belongs to another cluster — and so does this node.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::RegisterNodeRequest;
use serde::{Deserialize, Serialize};
use tonic::Code;

/// The file's name inside the data directory.
pub const FILE: &str = "identity.toml";

/// The contents of `identity.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The node's id (0: not yet allocated).
    pub node_id: u64,
    /// The cluster the data belongs to (0: not yet registered).
    pub cluster_id: u64,
    /// This data directory's random identity (hex).
    pub instance: String,
}

/// Why the node cannot establish who it is.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The identity file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity file is not valid.
    #[error("{path} is corrupt ({reason}); it says which node and cluster this data belongs to, so it is not rewritten: restore it, or start with an empty data directory")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The configured node id is not the one the data directory belongs to.
    #[error("the data directory {dir} belongs to node {stored}, not to node {configured}: drop --node-id or use that node's id")]
    OtherNode {
        /// The data directory.
        dir: PathBuf,
        /// The id kept in it.
        stored: u64,
        /// The id configured.
        configured: u64,
    },
    /// Placement refused the registration for good (another identity holds
    /// the id, another cluster, a removed node).
    #[error("placement refused this node: {0}")]
    Refused(String),
    /// The data directory holds data but no identity, and no id was given.
    #[error("the data directory {0} holds a node's data but no identity.toml (made by an older ringkv): start it once with --node-id of the node it belongs to")]
    Unidentified(PathBuf),
    /// Placement answered with another cluster's id than the data's.
    #[error("the data directory belongs to cluster {stored}, but placement runs cluster {placement}: this node refuses to start")]
    WrongCluster {
        /// The cluster id kept in the data directory.
        stored: u64,
        /// The cluster id placement answered.
        placement: u64,
    },
}

impl Identity {
    /// Reads `dir/identity.toml`; `None` when it does not exist.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let id: Identity =
            toml::from_str(&text).map_err(|e| IdentityError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        if id.instance.is_empty() {
            return Err(IdentityError::Corrupt { path, reason: "no instance".into() });
        }
        Ok(Some(id))
    }

    /// Writes `dir/identity.toml` durably: a temporary file, fsynced, renamed
    /// over the old one, and the directory fsynced.
    pub fn store(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(FILE);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        let text = toml::to_string(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    /// A new identity for a new data directory.
    pub fn fresh(node_id: u64) -> Identity {
        Identity { node_id, cluster_id: 0, instance: format!("{:032x}", rand::random::<u128>()) }
    }
}

/// Establishes the node's identity before it opens its data: loads it (or
/// makes a new one), registers with placement under it — waiting as long as
/// placement is unreachable, logging every few attempts — and keeps what
/// placement answered (the allocated id, the cluster id) in the data dir.
/// `register` carries the node's addresses, zone and capacity.
pub async fn establish(
    dir: &Path,
    configured_id: u64,
    client: &PlacementClient,
    mut register: RegisterNodeRequest,
    retry: Duration,
) -> Result<Identity, IdentityError> {
    let mut id = match Identity::load(dir)? {
        Some(id) if configured_id != 0 && id.node_id != 0 && id.node_id != configured_id => {
            return Err(IdentityError::OtherNode { dir: dir.into(), stored: id.node_id, configured: configured_id })
        }
        Some(mut id) => {
            id.node_id = id.node_id.max(configured_id);
            id
        }
        // Data without an identity (an older version made it) must keep
        // the id its replicas were created under: never a fresh one.
        None if configured_id == 0 && dir.join("db").exists() => return Err(IdentityError::Unidentified(dir.into())),
        None => Identity::fresh(configured_id),
    };
    register.node_id = id.node_id;
    register.cluster_id = id.cluster_id;
    register.instance = id.instance.clone();
    let mut attempts = 0u32;
    let resp = loop {
        let req = register.clone();
        match client
            .call(retry * 5, |mut c| {
                let req = req.clone();
                async move { c.register_node(req).await }
            })
            .await
        {
            Ok(r) => break r,
            Err(s)
                if matches!(
                    s.code(),
                    Code::AlreadyExists | Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound
                ) =>
            {
                return Err(IdentityError::Refused(s.message().to_string()))
            }
            Err(s) => {
                attempts += 1;
                if attempts % 5 == 1 {
                    tracing::warn!(attempts, "registering with placement (waiting for it): {}", s.message());
                }
                tokio::time::sleep(retry).await;
            }
        }
    };
    if id.cluster_id != 0 && resp.cluster_id != id.cluster_id {
        return Err(IdentityError::WrongCluster { stored: id.cluster_id, placement: resp.cluster_id });
    }
    if id.node_id != 0 && resp.node_id != id.node_id {
        return Err(IdentityError::Refused(format!(
            "asked for node id {}, placement answered {}",
            id.node_id, resp.node_id
        )));
    }
    let changed = id.node_id != resp.node_id || id.cluster_id != resp.cluster_id;
    id.node_id = resp.node_id;
    id.cluster_id = resp.cluster_id;
    if changed || Identity::load(dir)?.is_none() {
        id.store(dir)?;
    }
    tracing::info!(node_id = id.node_id, cluster_id = id.cluster_id, "registered with placement");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_a_store_and_load_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        let id = Identity { node_id: 1001, cluster_id: 77, instance: "abc".into() };
        id.store(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(id));
        assert_ne!(Identity::fresh(0).instance, Identity::fresh(0).instance, "instances are random");
    }

    #[tokio::test]
    async fn a_data_dir_of_another_node_or_without_identity_is_refused_before_placement_is_asked() {
        let client = PlacementClient::new(vec!["127.0.0.1:1".into()]);
        let req = RegisterNodeRequest::default;
        let dir = tempfile::tempdir().unwrap();
        Identity { node_id: 1001, cluster_id: 7, instance: "abc".into() }.store(dir.path()).unwrap();
        let err = establish(dir.path(), 5, &client, req(), Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(err, IdentityError::OtherNode { stored: 1001, configured: 5, .. }), "{err}");

        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("db")).unwrap();
        let err = establish(old.path(), 0, &client, req(), Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(err, IdentityError::Unidentified(_)), "{err}");
        assert!(Identity::load(old.path()).unwrap().is_none(), "nothing written");
    }

    #[test]
    fn a_corrupt_identity_file_is_a_clear_error_and_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["node_id = \"x\"", "node_id = 1\ncluster_id = 2\n", "\u{0}\u{1}", "node_id = 1\nextra = 2\n"] {
            std::fs::write(dir.path().join(FILE), text).unwrap();
            let err = Identity::load(dir.path()).unwrap_err();
            assert!(matches!(err, IdentityError::Corrupt { .. }), "{text:?}: {err}");
            assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).unwrap(), text);
        }
    }
}
