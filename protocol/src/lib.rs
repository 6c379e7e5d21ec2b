//! The wire contract between RoomGuard edge agents and the collector.
//!
//! Agents publish one QoS 1 message per device poll (a [`Batch`]) to
//! `roomguard/v1/{site}/{agent}/batch`, and keep a retained [`Status`] on
//! `roomguard/v1/{site}/{agent}/status` whose last-will says "offline".
//! The collector answers on `roomguard/v1/{site}/{agent}/ack` with the batches
//! it has committed ([`Confirm`]); only then does the agent drop them.
//! Both sides use only this crate to build and read topics and payloads, so the
//! contract lives in one place; `docs/PROTOCOL.md` is its human-readable form.

pub mod auth;
pub mod batch;
pub mod clock;
pub mod conf;
pub mod confirm;
pub mod health;
pub mod ident;
pub mod mqtt;
pub mod status;
pub mod topic;

pub use auth::{AgentKey, AgentSecret, AuthError};
pub use batch::{decode_batch, Batch, Label, PointMeta, Quality, Reading, RejectReason};
pub use confirm::{Confirm, ConfirmError, SeqRange};
pub use ident::{validate_id, IdError};
pub use status::{AgentState, DeviceHealth, SpoolStatus, Status};
pub use topic::{Topic, TopicError, TopicKind};

/// The payload version this build writes and the only one it accepts.
///
/// Bumped only for incompatible changes; adding an optional field is compatible
/// and does not change it (decoders ignore fields they do not know).
pub const PROTOCOL_VERSION: u32 = 1;

/// Root of every RoomGuard topic.
pub const TOPIC_ROOT: &str = "roomguard";

/// Largest payload the collector accepts, in bytes. A device poll of a few
/// hundred points is well under this; anything bigger is a bug or an attack.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Most readings one batch may carry.
pub const MAX_READINGS_PER_BATCH: usize = 2_000;
