//! Feature flags: the model, a compiled evaluation engine with Unleash's semantics and bucketing, import of
//! Unleash's client features format, and the store with its in-memory snapshot. Any Keel function can evaluate
//! flags to gate its own behaviour.

mod compile;
pub mod datamap;
mod eval;
pub mod hash;
pub mod model;
pub mod store;
pub mod unleash;

pub use compile::{Invalid, MAX_WEIGHT, check_flag, check_neighbours, validate_flag, validate_segment};
pub use eval::{Context, ErrorCode, Evaluation, OFF, ON, Reason, Refreshed, Snapshot, Step, StoredFlag, payload_value};
pub use model::*;
