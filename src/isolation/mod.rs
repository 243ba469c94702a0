//! What keeps co-resident instances apart: one cgroup each, the logical
//! address, the one-holder lock, and the bind audit. Namespaces (host name,
//! bind paths) are set up in the child by `process::spawn`.

pub mod address;
pub mod audit;
pub mod bpf;
pub mod cgroup;
pub mod lock;
pub mod sockets;
pub mod usage;
