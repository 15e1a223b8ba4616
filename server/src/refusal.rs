//! Why a request is refused, and every way that is told: the envelope error code, the close code
//! of a raw connection, the HTTP status of `/publish` and the `reason` label of
//! `tagcast_requests_rejected_total`, side by side in one table keyed by [`Reason`]
//! (PROTOCOL.md §4, §6, §7).

use tagcast::ErrorCode;

use crate::close;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Malformed or invalid request, or a binary frame.
    BadRequest,
    /// Unauthorized send.
    Unauthorized,
    /// Over `--rate-limit`.
    RateLimited,
    /// The cluster bus is down.
    Unavailable,
    /// Over `--max-message-bytes`.
    TooBig,
}

/// How one reason is told on each channel.
struct Row {
    code: ErrorCode,
    close: u16,
    status: u16,
    label: &'static str,
}

impl Reason {
    /// Every reason, in the order of [`index`](Reason::index).
    pub const ALL: [Reason; 5] = [
        Reason::BadRequest,
        Reason::Unauthorized,
        Reason::RateLimited,
        Reason::Unavailable,
        Reason::TooBig,
    ];

    /// The table: the one place where a reason meets its codes.
    const fn row(self) -> Row {
        match self {
            Reason::BadRequest => Row {
                code: ErrorCode::BadRequest,
                close: close::INVALID_PAYLOAD,
                status: 400,
                label: "bad_request",
            },
            Reason::Unauthorized => Row {
                code: ErrorCode::Unauthorized,
                close: close::POLICY_VIOLATION,
                status: 401,
                label: "unauthorized",
            },
            Reason::RateLimited => Row {
                code: ErrorCode::RateLimited,
                close: close::POLICY_VIOLATION,
                status: 429,
                label: "rate_limited",
            },
            Reason::Unavailable => Row {
                code: ErrorCode::Unavailable,
                close: close::TRY_AGAIN_LATER,
                status: 503,
                label: "unavailable",
            },
            // Envelope mode has no code of its own for it: the connection closes with 1009.
            Reason::TooBig => Row {
                code: ErrorCode::BadRequest,
                close: close::MESSAGE_TOO_BIG,
                status: 413,
                label: "too_big",
            },
        }
    }

    /// The envelope error code (`tagcast.v1` error frames).
    pub fn error_code(self) -> ErrorCode {
        self.row().code
    }

    /// The close code of a raw connection whose request is refused.
    pub fn close_code(self) -> u16 {
        self.row().close
    }

    /// The HTTP status of a refused `/publish`.
    pub fn http_status(self) -> u16 {
        self.row().status
    }

    /// The `reason` label of `tagcast_requests_rejected_total`.
    pub fn label(self) -> &'static str {
        self.row().label
    }

    /// The position in [`ALL`](Reason::ALL), for arrays of per-reason counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refused request: why, and a text naming the problem (never holding a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// The text for the sender.
    pub text: String,
}

impl Refusal {
    /// A refusal for `reason` with `text`.
    pub fn new(reason: Reason, text: impl Into<String>) -> Self {
        Refusal {
            reason,
            text: text.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_place_and_its_codes() {
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        assert_eq!(Reason::Unauthorized.close_code(), 1008);
        assert_eq!(Reason::RateLimited.http_status(), 429);
        assert_eq!(Reason::Unavailable.close_code(), 1013);
        assert_eq!(Reason::TooBig.http_status(), 413);
        assert_eq!(Reason::BadRequest.error_code(), ErrorCode::BadRequest);
    }
}
