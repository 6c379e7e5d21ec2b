//! RoomGuard collector: takes in every agent's batches from MQTT, validates
//! them, stores them in the embedded SQLite store and serves the API.
//!
//! `ingest` (MQTT → validation) feeds `store` (one writer thread) through a
//! bounded queue; `confirm` tells agents what is committed so they can drop
//! it from their spools; `api` reads the store; `broker` is the embedded MQTT
//! broker used when no external one is configured.

pub mod alarm;
pub mod api;
pub mod auth;
pub mod base64;
pub mod broker;
pub mod config;
pub mod confirm;
pub mod influx;
pub mod ingest;
pub mod inspection;
pub mod live;
pub mod metrics;
pub mod store;
