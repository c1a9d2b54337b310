//! Causeway's typed configuration: parsing `causeway.toml` with spans, semantic validation, and
//! diagnostics that point at `file:line:col` with a hint.
//!
//! Pure: no sockets, no async runtime, no file I/O. The caller reads the file and hands over
//! its text; [`load`] returns either a [`ValidatedConfig`] (possibly with warnings) or a
//! [`Report`] holding every problem found.
//!
//! ```
//! let text = r#"
//! gateway_id = "line3"
//! [[source]]
//! name = "press1"
//! kind = "modbus-tcp"
//! address = "127.0.0.1:502"
//! tags = [ { name = "parts", register = "holding:0", type = "u32" } ]
//! [[rule]]
//! kind = "counter"
//! total = "press1.parts"
//! [[sink]]
//! name = "out"
//! kind = "stdout"
//! routes = ["production.*"]
//! "#;
//! let config = firmware_config::load("causeway.toml", text).unwrap();
//! assert_eq!(config.gateway_id, "line3");
//! ```

pub mod diagnostic;
pub mod model;
pub mod raw;
pub mod topic;
pub mod units;
mod validate;

use std::ops::Deref;

pub use diagnostic::{Problem, ProblemSeverity, Report};
pub use model::*;
pub use validate::{MAX_READ_BITS, MAX_READ_REGISTERS};

/// A configuration that passed every check. Only [`load`] makes one.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    config: GatewayConfig,
    warnings: Report,
}

impl ValidatedConfig {
    /// Warnings found while loading (no errors: those stop [`load`]).
    pub fn warnings(&self) -> &Report {
        &self.warnings
    }

    /// The configuration itself.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }
}

impl Deref for ValidatedConfig {
    type Target = GatewayConfig;

    fn deref(&self) -> &GatewayConfig {
        &self.config
    }
}

/// Parses and validates a config file's `text`; `name` (usually its path) appears in diagnostics.
///
/// # Errors
/// A [`Report`] with every problem found (syntax errors stop at the first; semantic checks all run)
/// when any problem is an error.
pub fn load(name: &str, text: &str) -> Result<ValidatedConfig, Report> {
    let raw: raw::RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = error.message().trim().to_owned();
            let mut problem = Problem::error(message.clone(), span, "here");
            if let Some(field) = message.strip_prefix("unknown field `") {
                let field = field.split('`').next().unwrap_or_default();
                problem = problem.help(format!(
                    "`{field}` is not a setting here; check its spelling against docs/configuration.md"
                ));
            }
            // The text could not be parsed, so secrets are found by their keys.
            return Err(Report::new(name, &mask_secret_values(text), vec![problem]));
        }
    };
    // Diagnostics print the lines around what they point at: secrets written inline are
    // masked in the text they are rendered from, whichever problem's context shows them.
    let shown = redact(text, &raw.secret_spans(text));
    let (config, problems) = validate::validate(raw);
    match config {
        Some(config) => Ok(ValidatedConfig {
            config,
            warnings: Report::new(name, &shown, problems),
        }),
        None => Err(Report::new(name, &shown, problems)),
    }
}

/// `url` with the password of its `user:password@` part masked, for messages.
pub(crate) fn mask_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}{}",
                &url[..start + colon + 1],
                "*".repeat(at - colon - 1),
                &url[start + at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `text` with the values of `password`, `bearer`, `token`, `api_key` and `client_secret` keys
/// masked, found textually (for text that does not parse). Byte lengths are kept.
fn mask_secret_values(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for key in [
        "password",
        "bearer",
        "token",
        "api_key",
        "client_secret",
        "hmac_secret",
    ] {
        let mut from = 0;
        while let Some(found) = text[from..].find(key) {
            let at = from + found;
            from = at + key.len();
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-') {
                continue;
            }
            let rest = &text[from..];
            let spaces = rest.len() - rest.trim_start_matches([' ', '\t']).len();
            if !rest[spaces..].starts_with('=') {
                continue;
            }
            let value_start = from + spaces + 1;
            let value = &text[value_start..];
            let value_end = value_start + value.find(['\n', ',', '}']).unwrap_or(value.len());
            for b in &mut bytes[value_start..value_end] {
                if !matches!(*b, b' ' | b'\t' | b'"' | b'\'' | b'\r') {
                    *b = b'*';
                }
            }
        }
    }
    String::from_utf8(bytes).unwrap_or_else(|_| "*".repeat(text.len()))
}

/// `text` with every byte in `spans` but a string's quotes replaced by `*` (same length, so every
/// other span still points where it did).
fn redact(text: &str, spans: &[std::ops::Range<usize>]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for span in spans {
        let Some(slice) = bytes.get_mut(span.clone()) else {
            continue;
        };
        let quoted = slice.len() >= 2
            && matches!(slice.first(), Some(b'"' | b'\''))
            && slice.first() == slice.last();
        let inner = if quoted {
            let n = slice.len();
            &mut slice[1..n - 1]
        } else {
            slice
        };
        inner.iter_mut().for_each(|b| *b = b'*');
    }
    // Only ASCII bytes are written, so this holds; if it ever did not, show nothing rather
    // than the secret.
    String::from_utf8(bytes).unwrap_or_else(|_| "*".repeat(text.len()))
}

#[cfg(test)]
mod tests;
