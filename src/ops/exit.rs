//! A command's outcome as integration code sees it. The exit statuses are
//! [`Exit`] (`control::exit`: the daemon answers with the same enum).

pub use crate::control::exit::Exit;

/// A command's outcome for integration code: its exit and what to say.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    pub message: String,
}

impl From<(i32, String)> for Outcome {
    fn from((code, message): (i32, String)) -> Outcome {
        Outcome {
            exit: Exit::from_code(code),
            message,
        }
    }
}
