//! keygate's pure domain.
//!
//! Architecture invariant: nothing here does IO, spawns tasks, reads the clock or the
//! random number generator, or knows about HTTP or SQL. Time (`now`) and randomness
//! (secret bytes) are passed in, so every function is deterministic and cheap to test.

pub mod credential;
pub mod decision;
pub mod index;
pub mod key_format;
pub mod limit;
pub mod record;
pub mod route;
pub mod scope;
pub mod settings;
pub mod usage;
pub mod user;
pub mod webhook;

pub use decision::{Check, Decision, DecisionCode, decide};
pub use index::{IndexedKey, KeyIndex, StateCounts};
pub use key_format::KeyHash;
pub use record::{KeyOrigin, KeyRecord, KeyState, UnixMillis};
pub use user::{OwnerState, Role, UserRecord};
