//! writ: a SPIFFE workload identity issuer for AI SRE agents.
//!
//! A map of the modules:
//! * [`audit`]: the tamper-evident audit log (Merkle tree, signed checkpoints).
//! * [`ca`]: one certificate authority per band (trust domain); mints X.509 and JWT
//!   SVIDs, rotates authorities, serves bundles.
//! * [`identity`]: how writ names agents, incidents and grants as SPIFFE IDs.
//! * [`store`]: the durable state, in redb, behind a typed interface.
//! * [`server`]: the issuer process and its gRPC admin API.
//! * [`cli`]: the `writ` command line, one file per command group.
//! * [`config`]: configuration file → typed config.
//! * [`logging`]: the log format and levels, and the process's one subscriber.
//! * [`proto`]: generated gRPC code (the SPIFFE Workload API and writ's own APIs).
//! * [`hex`]: lowercase hex and SHA-256 digests.
//! * [`errors`]: errors and statuses as one line with their causes.
//! * [`uds`]: gRPC channels over Unix sockets.
//! * [`health`] and [`reflection`]: the standard gRPC health and reflection services
//!   every socket serves beside its own.
//! * [`h2_authority`]: the HTTP/2 `:authority` repair that lets gRPC C-core clients
//!   (grpcio, py-spiffe) use every Unix socket writ serves.
//! * [`passwd`]: local accounts from /etc/passwd, uid ↔ name.
//! * [`throttle`]: rate limits for log lines a caller can cause.
//! * [`node_api`]: the contract between server and agents (trait, errors, wire policy);
//!   neither side owns it, and the agent depends on nothing else of the server's.
//! * [`notify`]: approver notifications: grant events posted to outbound webhooks
//!   (Slack or JSON), retried, never blocking a request.
//! * [`metrics`]: the Prometheus metrics of a process and their HTTP endpoint
//!   (docs/metrics.md); used by the issuer and the agent, using neither.
//! * [`backoff`]: jittered exponential backoff for reconnect and retry loops.
//! * [`backup`]: backup archives of a data directory (encrypted with age) and restoring
//!   them.
//! * [`snapshot`]: consistent copies of a redb database while it is written.
//! * [`agent`]: the agent: the Workload API socket (accept loop and limits in
//!   `agent::listener`, attestation in `agent::attest`), SVID cache, node API client.
#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod backoff;
pub mod backup;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod errors;
pub mod h2_authority;
pub mod health;
pub mod hex;
pub mod httpc;
pub mod identity;
pub mod k8s_psat;
pub mod logging;
pub mod metrics;
pub mod node_api;
pub mod notify;
pub mod passwd;
pub mod policy;
pub mod proto;
pub mod reflection;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod store;
pub mod throttle;
pub mod ttl;
pub mod uds;

pub use writ_verifier::{Band, WritClaims};
