//! keygate's JSON wire types and error codes, shared by the server and the CLI.
//!
//! Architecture invariant: types here describe the wire only; no IO and no server logic.

pub mod accounts;
pub mod error;
pub mod keys;
pub mod system;
pub mod webhooks;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
