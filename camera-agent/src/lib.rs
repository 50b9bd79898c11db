//! lapseguard camera agent: runs on every camera, outside the cluster.
//!
//! `watch` takes every *finished* frame from the capture folder into a durable spool
//! ([`watch`], [`spool`]), uploads it oldest capture first until the backend answered 2xx
//! ([`upload`]), and reports over MQTT: retained heartbeats with a last-will, remote
//! `pause`/`resume`/`rescan`/`set-interval` ([`mqtt`]). `simulate` plays a camera for
//! demos and load tests ([`simulate`]). See docs/camera-agent.md.

pub mod agent;
pub mod capture;
pub mod config;
pub mod control;
pub mod mqtt;
pub mod settings;
pub mod simulate;
pub mod spool;
pub mod telemetry;
pub mod tls;
pub mod upload;
pub mod watch;
