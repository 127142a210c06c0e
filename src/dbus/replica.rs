//! `org.opdbus.Blockchain.Replica` at `/org/opdbus/Blockchain/replica/<name>`: the read side of a
//! chain this daemon follows as a replica (`--replica-of`). Blocks, checkpoint and proofs come
//! from the copy, up to the tree size it verified; writes are refused with `ReadOnly`.

use super::Error;
use crate::chain::block::parse_hash;
use crate::replica::SharedIndex;
use crate::tlog::TileReader;
use zbus::interface;

/// The object path of the copy named `name` (its directory's name; characters a path may not
/// hold become `_`).
pub fn object_path(name: &str) -> String {
    let element: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{}/replica/{element}", super::OBJECT_PATH)
}

/// One copy, served read-only.
/// Block reads of one copy at a time (each holds a record of up to the chain's record limit,
/// three times over while it becomes JSON).
const MAX_READS: usize = 4;

pub struct ReplicaChainObject {
    index: SharedIndex,
    source: String,
    reads: tokio::sync::Semaphore,
    /// A Verify of this copy is running: one at a time (it reads the whole copy).
    verifying: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ReplicaChainObject {
    pub fn new(index: SharedIndex, source: String) -> Self {
        ReplicaChainObject {
            index,
            source,
            reads: tokio::sync::Semaphore::new(MAX_READS),
            verifying: Default::default(),
        }
    }

    /// The block at `height` as JSON, read off the runtime's workers and outside the index's
    /// lock; at most [`MAX_READS`] at a time per copy (`LimitsExceeded` beyond).
    async fn block_json(&self, height: u64) -> Result<String, Error> {
        let Ok(_permit) = self.reads.try_acquire() else {
            return Err(Error::LimitsExceeded(format!(
                "{MAX_READS} reads of this copy are in progress; retry once one has answered"
            )));
        };
        let location = self.index.read().location(height);
        let Some(location) = location else {
            return Err(Error::NotFound(format!(
                "no block at height {height} in the copy (verified size {})",
                self.size()
            )));
        };
        tokio::task::spawn_blocking(move || crate::replica::read_block(location, height))
            .await
            .map_err(|err| Error::StorageFailure(err.to_string()))?
            .map(|block| block.to_json())
            .map_err(Error::StorageFailure)
    }

    fn size(&self) -> u64 {
        self.index.read().size()
    }
}

#[interface(name = "org.opdbus.Blockchain.Replica")]
impl ReplicaChainObject {
    /// The source this copy follows.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn source(&self) -> String {
        self.source.clone()
    }

    /// The tree size the copy is verified up to (blocks `0..size`).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn verified_size(&self) -> u64 {
        self.size()
    }

    /// The block at `height` of the copy, as `GetBlockByHeight` of the source returns it.
    #[zbus(out_args("block_json"))]
    async fn get_block_by_height(&self, height: u64) -> Result<String, Error> {
        self.block_json(height).await
    }

    /// The block with `hash` (64 hex digits) in the copy.
    #[zbus(out_args("block_json"))]
    async fn get_block(&self, hash: &str) -> Result<String, Error> {
        let parsed = parse_hash(hash)
            .ok_or_else(|| Error::InvalidArgument("a block hash is 64 hex digits".into()))?;
        let height = self
            .index
            .read()
            .height_of(&parsed)
            .ok_or_else(|| Error::NotFound(format!("no block {hash} in the copy")))?;
        self.block_json(height).await
    }

    /// The checkpoint the copy is verified up to, with this replica's cosignature.
    #[zbus(out_args("checkpoint"))]
    async fn get_checkpoint(&self) -> Result<String, Error> {
        let path = self.index.read().tlog_dir().join("checkpoint");
        crate::files::read(&path)
            .map(|note| String::from_utf8_lossy(&note).into_owned())
            .map_err(|_| Error::Unavailable("the copy has no verified checkpoint yet".into()))
    }

    /// The RFC 9162 inclusion proof of the block at `height` in the copy's tree of `tree_size`
    /// leaves (up to the verified size).
    #[zbus(out_args("proof"))]
    async fn get_inclusion_proof(
        &self,
        height: u64,
        tree_size: u64,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let size = self.size();
        if height >= tree_size || tree_size > size {
            return Err(Error::InvalidArgument(format!(
                "height {height} must be below tree_size {tree_size}, at most the verified size {size}"
            )));
        }
        let tiles = TileReader::new(&self.index.read().tlog_dir());
        tiles
            .inclusion_proof(tree_size, height)
            .map(|proof| proof.iter().map(|hash| hash.to_vec()).collect())
            .map_err(|err| Error::StorageFailure(err.to_string()))
    }

    /// The RFC 9162 consistency proof from `old_size` to `new_size` leaves of the copy's tree.
    #[zbus(out_args("proof"))]
    async fn get_consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let size = self.size();
        if old_size == 0 || old_size > new_size || new_size > size {
            return Err(Error::InvalidArgument(format!(
                "1 <= old_size ({old_size}) <= new_size ({new_size}) <= the verified size {size}"
            )));
        }
        let tiles = TileReader::new(&self.index.read().tlog_dir());
        tiles
            .consistency_proof(old_size, new_size)
            .map(|proof| proof.iter().map(|hash| hash.to_vec()).collect())
            .map_err(|err| Error::StorageFailure(err.to_string()))
    }

    /// Re-hashes and links every block of the copy up to its verified size, as the source's
    /// Verify does for its chain. One at a time per copy (`LimitsExceeded` meanwhile).
    #[zbus(out_args("ok", "blocks_checked", "message"))]
    async fn verify(&self) -> Result<(bool, u64, String), Error> {
        use std::sync::atomic::Ordering;
        /// Clears the flag however the verification ends (a panic included).
        struct Running(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.verifying.swap(true, Ordering::AcqRel) {
            return Err(Error::LimitsExceeded(
                "a Verify of this copy is running; retry once it has answered".into(),
            ));
        }
        let running = Running(self.verifying.clone());
        let (dir, size) = {
            let index = self.index.read();
            (index.dir().to_path_buf(), index.size())
        };
        if size == 0 {
            return Ok((true, 0, "the copy holds no verified block yet".into()));
        }
        let report = tokio::task::spawn_blocking(move || {
            let _running = running;
            crate::chain::verify::verify_dir(&dir, Some(size - 1), &mut |_| {})
        })
        .await
        .map_err(|err| Error::StorageFailure(err.to_string()))?
        .map_err(|err| Error::StorageFailure(err.to_string()))?;
        Ok((report.ok(), report.blocks_checked, report.summary()))
    }

    /// A copy takes no footprints: always `ReadOnly`.
    async fn add_footprint(
        &self,
        _plugin: &str,
        _operation: &str,
        _data_json: &str,
    ) -> Result<(u64, String), Error> {
        Err(Error::ReadOnly(format!(
            "this is a read-only copy of {}; add footprints on the source",
            self.source
        )))
    }
}
