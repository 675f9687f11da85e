//! The `[kafka]` section: the brokers, the topics' shape, and how the clients authenticate.
//! Security has typed keys (`security_protocol`, `sasl_*`, `ssl_*`), checked at load and
//! turned into librdkafka properties by `crate::kafka`; the free-form `[kafka.properties]` may
//! repeat them but not contradict them, and may not hold a secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::secrets::{self, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list; override: `TUNNEL_KAFKA_BROKERS`.
    pub brokers: String,
    /// Topics are named `<topic_prefix>.<schema>.<table>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Consumer group of `tunnel-consumer`.
    #[serde(default = "default_group")]
    pub consumer_group: String,
    /// How the clients talk to the brokers; unset: librdkafka's default (plaintext), or what
    /// `[kafka.properties]` says.
    #[serde(default)]
    pub security_protocol: Option<SecurityProtocol>,
    /// With a `sasl_*` protocol: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// The SASL password: here, or in `sasl_password_file`, or `TUNNEL_KAFKA_PASSWORD` (which
    /// wins). Never logged.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA certificates the brokers' certificates must chain to (default: the
    /// system's).
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// A client certificate and its key (PEM), for brokers that ask for one (mutual TLS).
    #[serde(default)]
    pub ssl_certificate_location: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key_location: Option<PathBuf>,
    /// Whether a broker's certificate must name the host connected to (default: yes).
    #[serde(default = "default_true")]
    pub ssl_verify_hostname: bool,
    /// Extra librdkafka properties given to every client.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name of it.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl<'de> Deserialize<'de> for SecurityProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(serde::de::Error::custom(format!(
                "kafka.security_protocol '{text}' is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl<'de> Deserialize<'de> for SaslMechanism {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(serde::de::Error::custom(format!(
                "kafka.sasl_mechanism '{text}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 \
                 (GSSAPI and OAUTHBEARER are not supported)"
            ))),
        }
    }
}

/// librdkafka properties that hold a secret: refused in `[kafka.properties]`, where they would
/// sit in plain text with everything else; the typed keys take them from a file or the
/// environment.
const SECRET_PROPERTIES: &[(&str, &str)] = &[
    (
        "sasl.password",
        "kafka.sasl_password_file or TUNNEL_KAFKA_PASSWORD",
    ),
    ("ssl.key.password", "an unencrypted kafka.ssl_key_location"),
    ("ssl.key.pem", "kafka.ssl_key_location"),
    ("ssl.keystore.password", "kafka.ssl_key_location"),
    (
        "sasl.oauthbearer.client.secret",
        "a supported sasl_mechanism",
    ),
];

impl KafkaConfig {
    /// Plaintext to `brokers`, everything else as a config file that names only them.
    pub fn new(brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_string(),
            topic_prefix: default_topic_prefix(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            consumer_group: default_group(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_verify_hostname: true,
            properties: BTreeMap::new(),
        }
    }

    /// Takes the SASL password from `TUNNEL_KAFKA_PASSWORD` (`from_env`) or
    /// `sasl_password_file` when one is given there.
    pub(super) fn resolve_password(&mut self, from_env: Option<&str>) -> Result<(), String> {
        if self.sasl_password.is_some() && self.sasl_password_file.is_some() {
            return Err(
                "kafka: sasl_password and sasl_password_file are both set: keep one".into(),
            );
        }
        if let Some(p) = secrets::secret(
            "kafka.sasl_password_file",
            from_env,
            self.sasl_password_file.as_deref(),
        )? {
            self.sasl_password = Some(p);
        }
        Ok(())
    }

    /// The typed security settings as librdkafka properties (the password included: for the
    /// client configuration only, never to show).
    pub fn security_properties(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(p) = self.security_protocol {
            out.push(("security.protocol", p.name().to_string()));
        }
        if let Some(m) = self.sasl_mechanism {
            out.push(("sasl.mechanisms", m.name().to_string()));
        }
        if let Some(u) = &self.sasl_username {
            out.push(("sasl.username", u.clone()));
        }
        if let Some(p) = &self.sasl_password {
            out.push(("sasl.password", p.expose().to_string()));
        }
        let path = |p: &Path| p.display().to_string();
        if let Some(p) = &self.ssl_ca_location {
            out.push(("ssl.ca.location", path(p)));
        }
        if let Some(p) = &self.ssl_certificate_location {
            out.push(("ssl.certificate.location", path(p)));
        }
        if let Some(p) = &self.ssl_key_location {
            out.push(("ssl.key.location", path(p)));
        }
        if !self.ssl_verify_hostname {
            out.push(("ssl.endpoint.identification.algorithm", "none".to_string()));
        }
        out
    }

    /// The security settings make sense together, their files can be read, and
    /// `[kafka.properties]` neither contradicts them nor holds a secret.
    pub(super) fn validate_security(&self) -> Result<(), String> {
        for (key, instead) in SECRET_PROPERTIES {
            if self.properties.contains_key(*key) {
                return Err(format!(
                    "[kafka.properties] may not hold '{key}' (a secret in plain text, shown with the rest): use {instead}"
                ));
            }
        }
        let protocol = self.security_protocol;
        let sasl = protocol.is_some_and(SecurityProtocol::uses_sasl);
        let tls = protocol.is_some_and(SecurityProtocol::uses_tls);
        let shown = protocol.map_or("unset", SecurityProtocol::name);
        if sasl {
            if self.sasl_mechanism.is_none() {
                return Err(format!(
                    "kafka.security_protocol = {shown} needs kafka.sasl_mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                ));
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "kafka.security_protocol = {shown} needs kafka.sasl_username"
                ));
            }
            if self.sasl_password.is_none() {
                return Err(format!(
                    "kafka.security_protocol = {shown} needs a password: kafka.sasl_password_file, TUNNEL_KAFKA_PASSWORD or kafka.sasl_password"
                ));
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
        {
            return Err(format!(
                "kafka: SASL settings are given but kafka.security_protocol is {shown}: set it to sasl_ssl (or sasl_plaintext)"
            ));
        }
        let files = [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            if !tls {
                return Err(format!(
                    "{key} is set but kafka.security_protocol is {shown}: set it to ssl or sasl_ssl"
                ));
            }
            std::fs::File::open(file).map_err(|e| format!("{key} {}: {e}", file.display()))?;
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(
                "kafka.ssl_certificate_location and kafka.ssl_key_location go together".into(),
            );
        }
        self.no_contradiction()
    }

    /// A property of `[kafka.properties]` that a typed key also sets must say the same.
    fn no_contradiction(&self) -> Result<(), String> {
        let typed = self.security_properties();
        for (key, value) in &self.properties {
            // librdkafka takes both spellings of the mechanism
            let name = if key == "sasl.mechanism" {
                "sasl.mechanisms"
            } else {
                key.as_str()
            };
            let Some((_, wanted)) = typed.iter().find(|(k, _)| *k == name) else {
                continue;
            };
            if !value.eq_ignore_ascii_case(wanted) {
                return Err(format!(
                    "[kafka.properties] '{key}' = '{value}' contradicts the typed kafka setting ('{wanted}'): keep one"
                ));
            }
        }
        Ok(())
    }
}

fn default_topic_prefix() -> String {
    "tunnel".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i32 {
    1
}
fn default_group() -> String {
    "tunnel-consumer".into()
}
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(extra: &str) -> KafkaConfig {
        toml::from_str(&format!("brokers = \"k:9093\"\n{extra}")).unwrap()
    }

    fn error(extra: &str) -> String {
        let mut k = kafka(extra);
        k.resolve_password(None)
            .and_then(|()| k.validate_security())
            .unwrap_err()
    }

    #[test]
    fn sasl_ssl_settings_become_librdkafka_properties_and_the_password_is_never_shown() {
        let k = kafka(
            "security_protocol = \"SASL_SSL\"\nsasl_mechanism = \"scram-sha-512\"\n\
             sasl_username = \"tunnel\"\nsasl_password = \"s3cret\"\nssl_verify_hostname = false",
        );
        k.validate_security().unwrap();
        let props = k.security_properties();
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "tunnel"),
            ("sasl.password", "s3cret"),
            ("ssl.endpoint.identification.algorithm", "none"),
        ] {
            assert!(
                props.iter().any(|(k, v)| *k == key && v == value),
                "{key}: {props:?}"
            );
        }
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    #[test]
    fn the_password_comes_from_the_environment_or_a_file() {
        let dir = std::env::temp_dir().join(format!("tunnel_kafkapw_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let text = format!(
            "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\n\
             sasl_password_file = \"{}\"",
            f.display()
        );
        let mut k = kafka(&text);
        k.resolve_password(None).unwrap();
        assert_eq!(k.sasl_password.as_ref().unwrap().expose(), "from-file");
        let mut k = kafka(&text);
        k.resolve_password(Some("from-env")).unwrap();
        assert_eq!(k.sasl_password.as_ref().unwrap().expose(), "from-env");
        let e = error(&format!("{text}\nsasl_password = \"x\""));
        assert!(e.contains("both set"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn incomplete_or_contradicting_settings_are_refused_naming_the_key() {
        let sasl = "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\n";
        assert!(error(sasl).contains("needs kafka.sasl_username"));
        let e = error(&format!("{sasl}sasl_username = \"u\""));
        assert!(e.contains("TUNNEL_KAFKA_PASSWORD"), "{e}");
        let e = error("security_protocol = \"sasl_ssl\"");
        assert!(e.contains("needs kafka.sasl_mechanism"), "{e}");
        let e = error("sasl_username = \"u\"");
        assert!(e.contains("security_protocol is unset"), "{e}");
        let e = error("security_protocol = \"plaintext\"\nssl_ca_location = \"/etc/hosts\"");
        assert!(e.contains("kafka.ssl_ca_location is set"), "{e}");
        let e = error("security_protocol = \"ssl\"\nssl_ca_location = \"/nonexistent/ca.pem\"");
        assert!(
            e.contains("kafka.ssl_ca_location /nonexistent/ca.pem"),
            "{e}"
        );
        let e = error("security_protocol = \"ssl\"\nssl_key_location = \"/etc/hosts\"");
        assert!(e.contains("go together"), "{e}");
        let e = error(
            "security_protocol = \"ssl\"\n[properties]\n\"security.protocol\" = \"SASL_SSL\"",
        );
        assert!(e.contains("contradicts") && e.contains("'ssl'"), "{e}");
        // the same value, in other letters, is no contradiction
        let mut k =
            kafka("security_protocol = \"ssl\"\n[properties]\n\"security.protocol\" = \"SSL\"");
        k.resolve_password(None).unwrap();
        k.validate_security().unwrap();
        let e = error("[properties]\n\"sasl.password\" = \"s3cret\"");
        assert!(
            e.contains("sasl_password_file") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(
            toml::from_str::<KafkaConfig>("brokers = \"k\"\nsecurity_protocol = \"tls\"")
                .unwrap_err()
                .to_string()
                .contains("not one of plaintext")
        );
    }
}
