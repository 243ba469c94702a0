//! The control socket: protocol types, and the client side. The server
//! side lives in the supervisor's event loop.

pub mod client;
pub mod observe;
pub mod proto;
