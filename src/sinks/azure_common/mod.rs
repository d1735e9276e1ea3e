//! Azure plumbing shared by sinks.

pub mod client;
pub mod shared_key;
pub mod token;

/// An error with its sources, `outer: inner: innermost` (the SDK's
/// top-level messages alone often say only "the request failed").
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
