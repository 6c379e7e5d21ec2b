//! RoomGuard collector: takes in every agent's batches from MQTT, validates
//! them, stores them in the embedded SQLite store and serves the API.
//!
//! `app` wires the parts and runs them. `ingest` (MQTT → validation) feeds
//! `store` (one writer thread) through a bounded queue; `confirm` tells agents
//! what is committed so they can drop it from their spools; `alarm` judges
//! and tells; `sinks` copy readings to long-range stores; `api` reads the
//! store; `broker` is the embedded MQTT broker used when no external one is
//! configured.

pub mod alarm;
pub mod api;
pub mod app;
pub mod auth;
pub mod base64;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod confirm;
pub mod ingest;
pub mod inspection;
pub mod live;
pub mod metrics;
pub mod sinks;
pub mod store;
