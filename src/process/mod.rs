//! Processes: spawning with a clean state, identity (/proc), pidfds, and
//! tracking without cgroups.

pub mod pidfd;
pub mod procfs;
pub mod rawsys;
pub mod spawn;
mod stack;
pub mod track;
