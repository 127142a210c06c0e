//! zstd dictionaries: trained from recent blocks, stored under `dict/`, never deleted.
//!
//! A block is a few hundred bytes of length-prefixed fields and JSON; alone, zstd finds little
//! to reuse in it (about 1.3x). A dictionary trained on recent blocks holds the field names,
//! plugin names and values that recur, and brings small blocks to the seed's 3–5x.
//!
//! Each dictionary carries the random 32-bit id zstd's trainer gives it; the id is written in
//! every frame compressed with it, so a cache file names the dictionary it needs, and every
//! dictionary ever used stays on disk: old files stay readable after a retrain. Id 0 means
//! "no dictionary" (the first blocks, before enough samples exist to train one).
//!
//! A dictionary file (`dict/<id, 8 hex digits>.zdict`) is written and synced before the first
//! cache file that uses it, so a cache file never refers to a dictionary that is not on disk.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zstd::dict::DecoderDictionary;

/// A dictionary's id and bytes.
pub type Trained = (u32, Vec<u8>);

/// Largest dictionary trained, in bytes (zstd's own recommendation is ~100x smaller than the
/// samples; 16 KiB suits blocks of a few hundred bytes).
pub const MAX_DICTIONARY_BYTES: usize = 16 * 1024;
/// Blocks needed before the first dictionary is trained (then again each time they double).
pub const FIRST_TRAINING_SAMPLES: usize = 8;
/// Recent block encodings kept as training samples.
pub const SAMPLES_KEPT: usize = 2048;
/// Blocks written with one dictionary before a new one is trained from the recent samples.
pub const RETRAIN_EVERY: u64 = 50_000;

/// The dictionaries a cache directory holds, by id; shared by readers and the writer.
pub struct Dictionaries {
    dir: PathBuf,
    /// Every dictionary this process has seen, also those retired from disk meanwhile (a
    /// reader may still hold a file compressed with one).
    decoders: RwLock<HashMap<u32, Arc<DecoderDictionary<'static>>>>,
    /// The dictionary files on disk and their sizes.
    files: RwLock<HashMap<u32, u64>>,
}

impl Dictionaries {
    /// Loads every dictionary in `dir` (created when missing); returns them with the newest
    /// (most recently modified) one's id and bytes, the one new blocks are compressed with.
    pub fn load(dir: &Path) -> std::io::Result<(Dictionaries, Option<Trained>)> {
        // Created on first use (`add`); a missing directory is an empty one.
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Dictionaries::empty(dir), None))
            }
            Err(err) => return Err(err),
        };
        let mut decoders = HashMap::new();
        let mut newest: Option<(std::time::SystemTime, u32, Vec<u8>)> = None;
        let mut files = HashMap::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_file_name) else {
                continue;
            };
            let bytes = match crate::files::read(&entry.path()) {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::warn!(path = %entry.path().display(), %err, "ignoring an unreadable dictionary file");
                    continue;
                }
            };
            if zstd::zstd_safe::get_dict_id_from_dict(&bytes).map(u32::from) != Some(id) {
                tracing::warn!(path = %entry.path().display(), "ignoring a dictionary file whose content does not match its name");
                continue;
            }
            // zstd refuses damaged tables by returning nothing, which `DecoderDictionary::copy`
            // would turn into a panic: ask first.
            if zstd::zstd_safe::DDict::try_create(&bytes).is_none() {
                tracing::warn!(path = %entry.path().display(), "ignoring a damaged dictionary file");
                continue;
            }
            files.insert(id, bytes.len() as u64);
            decoders.insert(id, Arc::new(DecoderDictionary::copy(&bytes)));
            let modified = entry
                .metadata()?
                .modified()
                .unwrap_or(std::time::UNIX_EPOCH);
            if newest.as_ref().is_none_or(|(t, _, _)| modified >= *t) {
                newest = Some((modified, id, bytes));
            }
        }
        Ok((
            Dictionaries {
                dir: dir.to_path_buf(),
                decoders: RwLock::new(decoders),
                files: RwLock::new(files),
            },
            newest.map(|(_, id, bytes)| (id, bytes)),
        ))
    }

    /// No dictionaries (yet) in `dir`.
    pub fn empty(dir: &Path) -> Dictionaries {
        Dictionaries {
            dir: dir.to_path_buf(),
            decoders: RwLock::new(HashMap::new()),
            files: RwLock::new(HashMap::new()),
        }
    }

    /// The decoder for dictionary `id`, if this cache has it.
    pub fn decoder(&self, id: u32) -> Option<Arc<DecoderDictionary<'static>>> {
        self.decoders.read().get(&id).cloned()
    }

    /// The bytes of dictionary `id` as its file holds them (the shared tier uploads them).
    pub fn file_bytes(&self, id: u32) -> std::io::Result<Vec<u8>> {
        crate::files::read(&self.dir.join(file_name(id)))
    }

    /// Writes a new dictionary durably and makes it available to readers.
    fn add(&self, id: u32, bytes: &[u8]) -> std::io::Result<()> {
        crate::files::create_dir_all(&self.dir)?;
        let path = self.dir.join(file_name(id));
        let tmp = self.dir.join(format!(".{}.tmp", file_name(id)));
        let _ = std::fs::remove_file(&tmp); // a leftover of a crash, or a planted link
        let mut file = crate::files::create_new(&tmp, crate::files::FILE_MODE)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::files::sync_dir(&self.dir)?;
        self.decoders
            .write()
            .insert(id, Arc::new(DecoderDictionary::copy(bytes)));
        self.files.write().insert(id, bytes.len() as u64);
        Ok(())
    }

    /// Deletes every dictionary file but `keep`'s. Only for when no entry on disk uses them
    /// any more (every entry was just recompressed with `keep`); this process still reads
    /// them, a later one would drop a stray entry that needs one as unreadable (a miss).
    pub fn retire_all_but(&self, keep: u32) {
        let mut files = self.files.write();
        files.retain(|&id, _| {
            id == keep
                || std::fs::remove_file(self.dir.join(file_name(id)))
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
        });
    }

    /// Number of dictionary files and their total size in bytes.
    pub fn count_and_bytes(&self) -> (u64, u64) {
        let files = self.files.read();
        (files.len() as u64, files.values().sum())
    }
}

fn file_name(id: u32) -> String {
    format!("{id:08x}.zdict")
}

fn parse_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".zdict")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// What compresses new blocks: the current dictionary, and the samples the next is trained on.
/// Owned by the one thread that writes the cache.
pub struct Encoder {
    level: i32,
    /// Id of the dictionary loaded in `compressor` (0: none).
    current_id: u32,
    /// One compression context for every block: the dictionary's tables are built once.
    compressor: zstd::bulk::Compressor<'static>,
    samples: std::collections::VecDeque<Vec<u8>>,
    written_since_training: u64,
    /// In its first few thousand blocks: training whenever the samples double.
    young: bool,
    /// Samples needed for the next training while young.
    next_training_at: usize,
    retrain_every: u64,
}

/// What [`Encoder::observe`] did.
pub enum Training {
    /// Nothing new.
    None,
    /// A new dictionary with this id is in use from now on; `young` while the cache is still
    /// in its first few thousand blocks (each dictionary much better than the one before).
    Trained { id: u32, young: bool },
}

impl Encoder {
    pub fn new(level: i32, current: Option<Trained>) -> std::io::Result<Encoder> {
        let has_dictionary = current.is_some();
        let (current_id, compressor) = match current {
            Some((id, bytes)) => (id, zstd::bulk::Compressor::with_dictionary(level, &bytes)?),
            None => (0, zstd::bulk::Compressor::new(level)?),
        };
        Ok(Encoder {
            level,
            current_id,
            compressor,
            samples: std::collections::VecDeque::new(),
            written_since_training: 0,
            // A cache that has a dictionary already is past its young phase.
            young: !has_dictionary,
            next_training_at: FIRST_TRAINING_SAMPLES,
            retrain_every: RETRAIN_EVERY,
        })
    }

    /// Compresses one block encoding as a single zstd frame (dictionary id in its header).
    pub fn compress(&mut self, encoding: &[u8]) -> std::io::Result<Vec<u8>> {
        self.compressor.compress(encoding)
    }

    /// The id of the dictionary new blocks are compressed with (0: none).
    pub fn current_id(&self) -> u32 {
        self.current_id
    }

    /// Remembers a written block as a training sample and trains a dictionary when it is time:
    /// first once enough samples exist, then every [`RETRAIN_EVERY`] blocks.
    pub fn observe(&mut self, encoding: &[u8], dictionaries: &Dictionaries) -> Training {
        self.written_since_training += 1;
        // Past the young phase, only what the next training uses is kept: the last
        // SAMPLES_KEPT blocks before it, not a copy of every block (issue 18: this was a tenth
        // of the cache thread's CPU).
        let sampled =
            self.young || self.written_since_training + SAMPLES_KEPT as u64 > self.retrain_every;
        if sampled {
            if self.samples.len() == SAMPLES_KEPT {
                self.samples.pop_front();
            }
            self.samples.push_back(encoding.to_vec());
        }
        // A young cache retrains as its samples double (64, 128, … SAMPLES_KEPT): each
        // dictionary is better than the last; after that, every RETRAIN_EVERY blocks.
        let young = self.young;
        let due = if young {
            self.samples.len() >= self.next_training_at
        } else {
            self.written_since_training >= self.retrain_every
        };
        if !due {
            return Training::None;
        }
        match self.train(dictionaries) {
            Ok(id) => Training::Trained { id, young },
            Err(err) => {
                // Too few or too uniform samples: try again with more.
                tracing::debug!(%err, samples = self.samples.len(), "cannot train a cache dictionary yet");
                self.advance_schedule();
                Training::None
            }
        }
    }

    /// After a training (or a failed attempt): while young, the next one when the samples have
    /// doubled; past SAMPLES_KEPT, every `retrain_every` blocks.
    fn advance_schedule(&mut self) {
        self.written_since_training = 0;
        if self.young {
            self.next_training_at = self.samples.len() * 2;
            self.young = self.next_training_at <= SAMPLES_KEPT;
        }
    }

    /// Blocks between two trainings once the cache is past its young phase.
    pub fn set_retrain_every(&mut self, blocks: u64) {
        self.retrain_every = blocks;
    }

    fn train(&mut self, dictionaries: &Dictionaries) -> std::io::Result<u32> {
        let samples: Vec<&[u8]> = self.samples.iter().map(Vec::as_slice).collect();
        let total: usize = samples.iter().map(|s| s.len()).sum();
        // A dictionary larger than a quarter of its samples only memorises them.
        let size = MAX_DICTIONARY_BYTES.min(total / 4).max(1024);
        let bytes = zstd::dict::from_samples(&samples, size)?;
        let id = zstd::zstd_safe::get_dict_id_from_dict(&bytes)
            .map(u32::from)
            .ok_or_else(|| std::io::Error::other("the trained dictionary has no id"))?;
        if dictionaries.decoder(id).is_none() {
            dictionaries.add(id, &bytes)?;
        }
        let sample_count = samples.len();
        self.compressor.set_dictionary(self.level, &bytes)?;
        self.current_id = id;
        self.advance_schedule();
        tracing::info!(
            dictionary_id = format_args!("{id:08x}"),
            bytes = bytes.len(),
            samples = sample_count,
            "trained a new cache dictionary"
        );
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_dictionary_file_is_skipped_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id: u32 = 0x1234_5678;
        // The dictionary magic and the id its name promises, then tables that are not tables.
        let mut bytes = vec![0x37, 0xA4, 0x30, 0xEC];
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0xFF, 600));
        std::fs::write(dir.path().join(file_name(id)), &bytes).expect("write");
        let (dictionaries, newest) = Dictionaries::load(dir.path()).expect("load");
        assert!(newest.is_none(), "a damaged dictionary is not used");
        assert!(dictionaries.decoder(id).is_none());
    }
}
