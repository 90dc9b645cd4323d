//! One retry policy for every call a command makes to a host: a busy host
//! (502, 503, 504) and, where the call may be repeated safely, an
//! unreachable one are tried again after doubling waits, at least what the
//! host's Retry-After asks, and never more than 30 s; refusals are final.

use std::time::Duration;

use crate::RemoteError;

/// The longest wait between two tries.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// How many times, and how patiently, a call is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (1: no retry).
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each.
    pub backoff: Duration,
    /// Whether a host that cannot be reached is tried again too (uploads:
    /// yes, a document replaces itself; a question at the terminal: no,
    /// the person is told at once).
    pub retry_unreachable: bool,
}

impl RetryPolicy {
    /// A person waiting at the terminal for a search or an answer: a busy
    /// host is tried 5 times in all.
    pub const INTERACTIVE: RetryPolicy = RetryPolicy {
        attempts: 5,
        backoff: Duration::from_secs(2),
        retry_unreachable: false,
    };

    /// Whether `e` is worth another try under this policy.
    pub fn retryable(&self, e: &RemoteError) -> bool {
        match e {
            RemoteError::Transport(_) => self.retry_unreachable,
            RemoteError::Status { status, .. } => matches!(status, 502..=504),
            RemoteError::Protocol(_) => false,
        }
    }

    /// The wait before trying again after try number `attempt` (from 1)
    /// failed with `e`; `None` when `e` is final or the tries are spent.
    pub fn wait(&self, attempt: u32, e: &RemoteError) -> Option<Duration> {
        if attempt >= self.attempts.max(1) || !self.retryable(e) {
            return None;
        }
        let doubled = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(MAX_WAIT);
        let asked = match e {
            RemoteError::Status {
                retry_after: Some(s),
                ..
            } => Duration::from_secs(*s).min(MAX_WAIT),
            _ => Duration::ZERO,
        };
        Some(doubled.max(asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> RemoteError {
        RemoteError::Status {
            status,
            code: "x".into(),
            message: "m".into(),
            retry_after,
        }
    }

    #[test]
    fn busy_hosts_wait_longer_each_time_and_refusals_are_final() {
        let p = RetryPolicy {
            attempts: 4,
            backoff: Duration::from_millis(500),
            retry_unreachable: true,
        };
        let busy = status(503, None);
        assert_eq!(p.wait(1, &busy), Some(Duration::from_millis(500)));
        assert_eq!(p.wait(2, &busy), Some(Duration::from_secs(1)));
        assert_eq!(p.wait(3, &busy), Some(Duration::from_secs(2)));
        assert_eq!(p.wait(4, &busy), None, "four tries in all");
        assert_eq!(
            p.wait(1, &status(503, Some(7))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(p.wait(1, &status(503, Some(900))), Some(MAX_WAIT));
        assert_eq!(p.wait(1, &status(400, None)), None);
        assert_eq!(p.wait(1, &RemoteError::Protocol("x".into())), None);
        let down = RemoteError::Transport("refused".into());
        assert!(p.wait(1, &down).is_some());
        assert_eq!(RetryPolicy::INTERACTIVE.wait(1, &down), None);
        let long = RetryPolicy { attempts: 100, ..p };
        assert_eq!(long.wait(40, &busy), Some(MAX_WAIT));
    }
}
