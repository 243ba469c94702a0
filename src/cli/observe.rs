//! What `top`, `metrics` and `plan` read from a running daemon: every
//! instance's status with its usage (read from the cgroups at that moment,
//! never on a timer). These observers never launch a daemon: with none
//! running, every instance of the config is reported stopped.

use super::Ctx;
use crate::control::client::{self, ClientError};
use crate::control::proto::{Envelope, InstanceStatus, Request};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Daemon(String),
    #[error("the daemon's answer did not parse: {0}")]
    Answer(#[from] serde_json::Error),
}

impl FetchError {
    /// The CLI's exit status for this error.
    pub fn code(&self) -> i32 {
        match self {
            FetchError::Daemon(_) => 2,
            _ => 1,
        }
    }
}

/// Every instance's status, usage included. `Ok(None)`: no daemon runs.
pub fn fetch(ctx: &Ctx) -> Result<Option<Vec<InstanceStatus>>, FetchError> {
    let stream = match client::connect(&ctx.runtime_dir) {
        Ok(s) => s,
        Err(ClientError::NoDaemon(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let env = Envelope {
        config: ctx
            .config_explicit
            .then(|| ctx.config.display().to_string()),
        req: Request::Status { id: None },
    };
    let done = client::call(stream, &env, |_, _, _| {})?;
    if done.code != 0 {
        return Err(FetchError::Daemon(done.message));
    }
    let list = serde_json::from_value(done.data.unwrap_or_default())?;
    Ok(Some(list))
}

/// [`fetch`], or the config's instances as stopped when no daemon runs.
pub fn fetch_or_offline(ctx: &Ctx) -> Result<Vec<InstanceStatus>, (i32, String)> {
    match fetch(ctx) {
        Ok(Some(list)) => Ok(list),
        Ok(None) => {
            let done = super::local::offline_status(ctx, None)?;
            Ok(done
                .data
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default())
        }
        Err(e) => Err((e.code(), e.to_string())),
    }
}
