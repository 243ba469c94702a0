//! Cluster and init integration: the OCF resource agent and LSB init-script
//! actions, on the same requests as the CLI; exit-code tables and meta-data.

pub mod lsb;
pub mod ocf;
