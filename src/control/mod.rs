//! The control socket: protocol types (`proto`, `observe`, `exit`: the
//! answer codes, which are the CLI's exit statuses; `json_out`: a status
//! written as JSON by hand, for lists of thousands), the client
//! (`client`), and the server's connections and fairness (`server`; the
//! supervisor's event loop drives them).

pub mod client;
pub mod exit;
pub mod json_out;
pub mod observe;
pub mod proto;
pub mod server;
