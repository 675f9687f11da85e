//! The TLS settings of `[source]` and `[target]` as config keys (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`), put into the connection URL at load time as the libpq parameters they
//! are: one place (`crate::pg::tls`) reads them. A key that says otherwise than the URL's own
//! parameter is refused; the same value twice is not.

use std::path::PathBuf;

use super::secrets::encode;

/// The keys of one section, all optional.
#[derive(Debug, Clone, Default)]
pub(super) struct TlsParams {
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<PathBuf>,
    pub(super) sslcert: Option<PathBuf>,
    pub(super) sslkey: Option<PathBuf>,
}

impl TlsParams {
    /// The keys of a section.
    pub(super) fn of(
        sslmode: &Option<String>,
        sslrootcert: &Option<PathBuf>,
        sslcert: &Option<PathBuf>,
        sslkey: &Option<PathBuf>,
    ) -> TlsParams {
        TlsParams {
            sslmode: sslmode.clone(),
            sslrootcert: sslrootcert.clone(),
            sslcert: sslcert.clone(),
            sslkey: sslkey.clone(),
        }
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            ("sslmode", self.sslmode.clone()),
            ("sslrootcert", self.sslrootcert.as_ref().map(path)),
            ("sslcert", self.sslcert.as_ref().map(path)),
            ("sslkey", self.sslkey.as_ref().map(path)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// `url` with these settings as its parameters; `setting` (`source`, `target`) names the
    /// section in errors.
    pub(super) fn applied_to(&self, url: &str, setting: &str) -> Result<String, String> {
        let mut out = url.to_string();
        for (key, value) in self.pairs() {
            match query_value(url, key) {
                Some(there) if there == value => {}
                Some(there) => {
                    return Err(format!(
                        "{setting}.{key} = '{value}' contradicts the URL's {key}={there}: keep one"
                    ))
                }
                None => {
                    out.push(if out.contains('?') { '&' } else { '?' });
                    out.push_str(key);
                    out.push('=');
                    out.push_str(&encode(&value));
                }
            }
        }
        Ok(out)
    }
}

/// The value of parameter `key` in `url`'s query, percent-decoded as far as plain ASCII goes.
fn query_value(url: &str, key: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| decode(v))
    })
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_become_url_parameters_and_a_contradiction_is_refused() {
        let p = TlsParams {
            sslmode: Some("verify-full".into()),
            sslrootcert: Some(PathBuf::from("/etc/ssl/db ca.pem")),
            ..Default::default()
        };
        assert_eq!(
            p.applied_to("postgres://u@db/app", "source").unwrap(),
            "postgres://u@db/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Fdb%20ca.pem"
        );
        // the same value in the URL already: kept once
        assert_eq!(
            p.applied_to("postgres://u@db/app?sslmode=verify-full&x=1", "source")
                .unwrap(),
            "postgres://u@db/app?sslmode=verify-full&x=1&sslrootcert=%2Fetc%2Fssl%2Fdb%20ca.pem"
        );
        let e = p
            .applied_to("postgres://u@db/app?sslmode=require", "target")
            .unwrap_err();
        assert!(
            e.contains("target.sslmode = 'verify-full' contradicts the URL's sslmode=require"),
            "{e}"
        );
        let none = TlsParams::default();
        assert_eq!(
            none.applied_to("postgres://u@db/app", "source").unwrap(),
            "postgres://u@db/app"
        );
    }
}
