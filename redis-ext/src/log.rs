//! Writing to the Redis log safely.
//!
//! `RedisModule_Log` takes the message as a printf format string and the crate
//! builds it with `CString::new(..).unwrap()`: a `%` would be read as a
//! conversion and a NUL would panic. Every log line goes through here.

/// Makes `message` safe as a printf format: `%` doubled, NUL spelled out.
pub fn escape(message: &str) -> String {
    message.replace('%', "%%").replace('\0', "\\0")
}

/// Logs a warning.
pub fn warning(message: &str) {
    redis_module::logging::log_warning(escape(message));
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_neutralises_format_and_nul() {
        assert_eq!(super::escape("50% of %s\0"), "50%% of %%s\\0");
    }
}
