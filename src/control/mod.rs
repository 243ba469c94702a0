//! The control socket: protocol types (`proto`, `observe`), the client
//! (`client`), and the server's connections and fairness (`server`; the
//! supervisor's event loop drives them).

pub mod client;
pub mod observe;
pub mod proto;
pub mod server;
