//! The vectorized audit trail: a deterministic feature vector per block (`embed`) and
//! similarity search over the chain (`index`). See docs/format.md, "Block vectors".

pub mod embed;
pub mod index;
pub mod query;

pub use embed::{Embedder, HashingEmbedder, DIM};
pub use index::{Filter, Match, VectorIndex};
pub use query::SimilarQuery;
