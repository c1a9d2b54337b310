//! Secrets (passwords, tokens, keys, client secrets) from a file or an environment variable,
//! never from the config file: one reader for every source and sink.

use std::path::Path;

use firmware_config::Secret;

/// The secret's text: the variable's value, or the file's (relative to `base`) without its
/// trailing line break. `env` reads a variable (tests pass their own: setting the process
/// environment while other threads run is unsound). The error names the variable or the file,
/// never the secret.
///
/// # Errors
/// The variable is not set, or the file cannot be read, is not a regular file, is empty or is
/// larger than a secret.
pub fn read(
    secret: &Secret,
    base: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match secret {
        Secret::Env(name) => env(name)
            .ok_or_else(|| format!("the environment variable `{name}` is not set (or not UTF-8)")),
        Secret::File(path) => {
            let path = base.join(path);
            read_file(&path).map_err(|why| format!("cannot read file `{}`: {why}", path.display()))
        }
    }
}

/// [`read`] from the process environment.
///
/// # Errors
/// As [`read`].
pub fn read_env(secret: &Secret, base: &Path) -> Result<String, String> {
    read(secret, base, |name| std::env::var(name).ok())
}

/// Most bytes of a password file.
const MAX_SECRET: u64 = 4_096;

/// A password file's text, without its trailing line break. Refuses what is not a regular file
/// (a FIFO would block) or is larger than [`MAX_SECRET`].
pub fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_SECRET {
        return Err(format!(
            "{} bytes, more than a password ({MAX_SECRET})",
            meta.len()
        ));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        // O_NONBLOCK: a FIFO swapped in after the check above must not block the runtime.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(0o4000);
    }
    let file = options.open(path).map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_SECRET)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(text.to_owned())
}
