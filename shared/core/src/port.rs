//! The one error type every port returns, so callers handle backends the same way whichever adapter runs.

/// Why a port operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A conditional write's expectation did not hold; nothing was written. For a transaction, `index` names the
    /// first operation whose condition failed, when the backend says so.
    #[error("condition failed")]
    ConditionFailed { index: Option<usize> },
    /// The backend could not be reached or refused for a transient reason; the operation may be retried.
    /// The message is for operators' logs and never contains item data or secrets.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (too large, reserved attribute name, ...); retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl PortError {
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, PortError::ConditionFailed { .. })
    }
}
