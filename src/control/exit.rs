//! The exit statuses of the plain command line (README "Commands" and
//! "Exit codes by state"), as one enum: the daemon answers every request
//! with one of them (`Reply::Done`'s code on the wire), and the CLI exits
//! with it. The OCF and LSB surfaces map from this enum in their own single
//! tables (`integration::ocf`, `integration::lsb`).

/// What a `cohost` command exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; running and healthy (monitor, status).
    Ok,
    /// Failed, partial or unhealthy; a request that could not be done.
    Failed,
    /// Unknown instance, invalid instances file, bad arguments.
    Invalid,
    /// `status ID`: not running.
    NotRunning,
    /// The caller may not do this (not root, the daemon's user, or a
    /// member of `status_group` asking to read).
    Denied,
    /// `monitor`: cleanly stopped (the OCF meaning of 7).
    Stopped,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Invalid => 2,
            Exit::NotRunning => 3,
            Exit::Denied => 4,
            Exit::Stopped => 7,
        }
    }

    /// A code as the daemon answers it (the same numbers); anything else
    /// is a failure.
    pub fn from_code(code: i32) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Invalid,
            3 => Exit::NotRunning,
            4 => Exit::Denied,
            7 => Exit::Stopped,
            _ => Exit::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in [
            Exit::Ok,
            Exit::Failed,
            Exit::Invalid,
            Exit::NotRunning,
            Exit::Denied,
            Exit::Stopped,
        ] {
            assert_eq!(Exit::from_code(e.code()), e);
        }
        assert_eq!(Exit::from_code(5), Exit::Failed);
    }
}
