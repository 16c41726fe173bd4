//! The writ agent: serves the SPIFFE Workload API on a Unix socket, attests callers,
//! holds workload keys and rotates SVIDs.

pub mod h2_authority;
