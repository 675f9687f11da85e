//! Database passwords kept out of the config file: `password_file` (a Docker or Kubernetes
//! secret) or `TUNNEL_SOURCE_PASSWORD` / `TUNNEL_TARGET_PASSWORD`, put into the connection URL
//! at load time. Errors name the setting, never the value.

use std::path::Path;

/// A password or token: shown as `***` by `Debug` and `Display`; [`Secret::expose`] for the
/// one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A secret from the environment (`from_env`, which wins) or from `file` (`setting` names it
/// in errors).
pub(super) fn secret(
    setting: &str,
    from_env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>, String> {
    Ok(password(setting, from_env, file)?.map(Secret))
}

/// The password of `setting` (the file's key, `source.password_file` say): the
/// environment's, else the file's.
pub(super) fn password(
    setting: &str,
    from_env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, String> {
    if let Some(p) = from_env {
        return Ok(Some(p.to_string()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("{setting} {}: {e}", file.display()))?;
    // a secret file usually ends with a newline that is not part of the password
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err(format!(
            "{setting}.password_file {} is empty",
            file.display()
        ));
    }
    Ok(Some(text.to_string()))
}

/// `url` with `password` as the password of its user. A URL that has one already is refused:
/// two passwords for one connection is a mistake to point out, not to settle silently.
pub(super) fn with_password(url: &str, password: &str, setting: &str) -> Result<String, String> {
    let Some(scheme_end) = url.find("://") else {
        return Err(format!(
            "{setting}.url must be a postgres:// URL to take a password from password_file or the environment"
        ));
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return Err(format!(
            "{setting}.url names no user (user@host) for the password of password_file or the environment"
        ));
    };
    let user = &authority[..at];
    if user.contains(':') {
        return Err(format!(
            "{setting}.url has a password already, and so does password_file or the environment: keep one"
        ));
    }
    Ok(format!(
        "{}{user}:{}{}",
        &url[..scheme_end + 3],
        encode(password),
        &rest[at..]
    ))
}

/// Percent-encodes everything but the unreserved characters (RFC 3986).
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_goes_into_the_url_encoded() {
        let url = with_password(
            "postgres://reader@db:5432/app?sslmode=require",
            "p@ss:w/rd %",
            "source",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://reader:p%40ss%3Aw%2Frd%20%25@db:5432/app?sslmode=require"
        );
        let parsed: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(parsed.get_password(), Some("p@ss:w/rd %".as_bytes()));
    }

    #[test]
    fn two_passwords_or_no_user_are_refused_without_the_secret() {
        let e = with_password("postgres://r:old@db/app", "s3cret", "target").unwrap_err();
        assert!(
            e.contains("target.url has a password already") && !e.contains("s3cret"),
            "{e}"
        );
        let e = with_password("postgres://db/app", "s3cret", "source").unwrap_err();
        assert!(e.contains("names no user") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn the_environment_wins_over_the_file_and_the_files_newline_is_dropped() {
        let dir = std::env::temp_dir().join(format!("tunnel_secret_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        assert_eq!(
            password("source.password_file", None, Some(&f))
                .unwrap()
                .as_deref(),
            Some("from-file")
        );
        assert_eq!(
            password("source.password_file", Some("from-env"), Some(&f))
                .unwrap()
                .as_deref(),
            Some("from-env")
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(password("source.password_file", None, Some(&f))
            .unwrap_err()
            .contains("is empty"));
        let e = password("target.password_file", None, Some(&dir.join("missing"))).unwrap_err();
        assert!(e.starts_with("target.password_file"), "{e}");
        assert_eq!(password("source.password_file", None, None).unwrap(), None);
        let s = secret("registry.token_file", Some("tok"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (format!("{s} {s:?}"), s.expose()),
            ("*** ***".to_string(), "tok")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
