//! Errors as one line: a message followed by each distinct cause, so a transport failure
//! says why (a refused certificate, a closed connection) rather than "transport error".

use std::error::Error;

/// `head`, then `: cause` for every cause of `error` whose text is not already shown.
pub fn with_causes(head: &str, error: &(dyn Error + 'static)) -> String {
    let mut text = head.to_owned();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// A gRPC status as one line, with its causes.
pub fn describe_status(status: &tonic::Status) -> String {
    let head = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    with_causes(&head, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_appended_once_on_one_line() {
        let e = Wrapped(std::io::Error::other("connection\nrefused"));
        assert_eq!(
            with_causes("call failed", &e),
            "call failed: connection refused"
        );
        assert_eq!(
            with_causes("call failed: connection\nrefused", &e),
            "call failed: connection refused"
        );
    }
}
