//! What the runtime tells a controller's error reporter about a failed reconcile.
//!
//! A controller built with [`report_errors`](crate::Controller::report_errors) hears of
//! every reconcile of an existing object (an [`Event::Apply`](crate::Event::Apply)) that
//! returned an error or panicked, e.g. to set a condition or emit a Warning Event.
//!
//! Invariants:
//! * the reporter is awaited by the worker before the key is marked done, so it never
//!   runs concurrently with a reconcile of the same object;
//! * it runs after the queue was updated and the metrics and observers saw the outcome,
//!   so a slow reporter delays this key only, and its duration is not reconcile time;
//! * a panicking reporter is logged and otherwise ignored;
//! * the message names the error and each of its sources once, and is at most
//!   [`MAX_MESSAGE_BYTES`] long.

use std::error::Error;

use crate::controller::ErrorCategory;

/// The longest [`ErrorReport::message`], in bytes (a condition or Event message stays
/// readable and well under the API's limits).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The category of a reconcile that panicked.
pub const PANIC_CATEGORY: &str = "Panic";

/// One failed reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    /// The error's [`ErrorCategory::category`], or [`PANIC_CATEGORY`].
    pub category: &'static str,
    /// The error and its source chain joined with `": "`, each source printed once,
    /// truncated to [`MAX_MESSAGE_BYTES`] on a character boundary.
    pub message: String,
    /// Whether the error is terminal (not retried).
    pub terminal: bool,
}

impl ErrorReport {
    /// The report of `err`.
    pub fn of<E: Error + ErrorCategory + 'static>(err: &E) -> Self {
        Self {
            category: err.category(),
            message: error_chain(err),
            terminal: err.is_terminal(),
        }
    }

    /// The report of a panic with `message` (its payload).
    pub fn panic(message: &str) -> Self {
        Self {
            category: PANIC_CATEGORY,
            message: truncated(message.to_owned()),
            terminal: false,
        }
    }
}

/// `err` and its sources joined with `": "`. A source whose text the message already
/// contains (the usual `#[error("applying {name}: {source}")]`) is not repeated. An API
/// error reads as the server's message with its code and reason, not as kube's dump of
/// the whole status object. Truncated to [`MAX_MESSAGE_BYTES`].
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut message = String::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(cause) = next {
        let api = cause.downcast_ref::<kube::Error>().and_then(|e| match e {
            kube::Error::Api(status) => Some(status),
            _ => None,
        });
        let text = match api {
            Some(status) => format!("{} ({} {})", status.message, status.code, status.reason),
            None => cause.to_string(),
        };
        if !text.is_empty() && !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        // The API status is the whole story; what kube chains below it repeats it.
        next = if api.is_some() { None } else { cause.source() };
    }
    truncated(message)
}

fn truncated(mut message: String) -> String {
    let end = message.floor_char_boundary(MAX_MESSAGE_BYTES);
    message.truncate(end);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("api said no")]
    struct Leaf;

    #[derive(Debug, thiserror::Error)]
    #[error("patching status")]
    struct Middle(#[source] Leaf);

    /// Prints its source itself, as many thiserror types do.
    #[derive(Debug, thiserror::Error)]
    #[error("applying HelmRelease web: {0}")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Long(String, #[source] Leaf);

    impl ErrorCategory for Outer {
        fn category(&self) -> &'static str {
            "ApplyFailed"
        }
        fn is_terminal(&self) -> bool {
            true
        }
    }

    #[test]
    fn the_chain_names_every_source_once() {
        let err = Outer(Middle(Leaf));
        assert_eq!(
            ErrorReport::of(&err),
            ErrorReport {
                category: "ApplyFailed",
                message: "applying HelmRelease web: patching status: api said no".into(),
                terminal: true,
            }
        );
        assert_eq!(error_chain(&Middle(Leaf)), "patching status: api said no");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        // 'é' is two bytes: 1023 bytes of 'a' and then 'é' would straddle the limit.
        let text = format!("{}é and more", "a".repeat(MAX_MESSAGE_BYTES - 1));
        let message = error_chain(&Long(text, Leaf));
        assert_eq!(message.len(), MAX_MESSAGE_BYTES - 1);
        assert!(message.chars().all(|c| c == 'a'));
        let exact = "b".repeat(MAX_MESSAGE_BYTES + 10);
        assert_eq!(ErrorReport::panic(&exact).message.len(), MAX_MESSAGE_BYTES);
        assert_eq!(ErrorReport::panic("boom").category, "Panic");
    }
}
