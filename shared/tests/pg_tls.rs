//! PostgreSQL over TLS as libpq's `sslmode` means it, against a private server with `ssl = on`
//! and certificates made here by openssl: which modes connect, which refuse and why (the
//! endpoint named, the password never), and a client certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tunnel_shared::pg::{self, Session};
use tunnel_shared::testkit::{unique, PrivatePostgres};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for IP 127.0.0.1 only, a client certificate for `certuser`, and
/// another CA that signed none of them.
fn certificates(dir: &Path) {
    for ca in ["ca", "other_ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=test {ca}"),
            ],
        );
    }
    for (name, cn, ext) in [
        ("server", "test server", "subjectAltName=IP:127.0.0.1"),
        ("client", "certuser", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

fn session() -> Session {
    Session {
        application_name: "tls-test".into(),
        statement_timeout: Duration::from_secs(10),
        lock_timeout: Duration::ZERO,
        read_only: false,
        canonical_text: false,
    }
}

/// Connects and says whether the connection is encrypted, or the error's text.
async fn try_connect(url: &str) -> Result<bool, String> {
    let client = pg::connect(url, &session())
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_is_honoured_as_libpq_does_and_failures_name_the_endpoint_not_the_password() {
    let dir = std::env::temp_dir().join(unique("tunnel_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    let server = tokio::task::spawn_blocking(move || {
        certificates(&d);
        let mut pg = PrivatePostgres::start();
        pg.psql("postgres", "CREATE ROLE certuser LOGIN");
        pg.enable_tls(
            &d.join("server.pem"),
            &d.join("server.key"),
            &d.join("ca.pem"),
            "hostssl all certuser 127.0.0.1/32 cert\nhostnossl all certuser 127.0.0.1/32 reject",
        );
        pg
    })
    .await
    .unwrap();
    let f = |name: &str| -> PathBuf { dir.join(name) };
    let secret = "s3cret-pw-123";
    let base = server.url("app", secret, "postgres");
    let on_localhost = base.replace("127.0.0.1", "localhost");
    let ca = f("ca.pem").display().to_string();
    let other = f("other_ca.pem").display().to_string();

    assert_eq!(
        try_connect(&format!("{base}?sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(
        try_connect(&base).await,
        Ok(true),
        "prefer takes TLS when offered"
    );
    assert_eq!(
        try_connect(&format!("{base}?sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        try_connect(&format!("{base}?sslmode=verify-full&sslrootcert={ca}")).await,
        Ok(true)
    );
    // the certificate names 127.0.0.1 only: verify-full refuses localhost, verify-ca does not
    let e = try_connect(&format!(
        "{on_localhost}?sslmode=verify-full&sslrootcert={ca}"
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("localhost") && e.to_lowercase().contains("name"),
        "{e}"
    );
    assert_eq!(
        try_connect(&format!(
            "{on_localhost}?sslmode=verify-ca&sslrootcert={ca}"
        ))
        .await,
        Ok(true)
    );
    // a CA that signed nothing here: refused, with the endpoint and without the password
    for mode in ["verify-ca", "verify-full", "require"] {
        let e = try_connect(&format!("{base}?sslmode={mode}&sslrootcert={other}"))
            .await
            .unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{}", server.port())), "{e}");
        assert!(e.contains("UnknownIssuer") || e.contains("issuer"), "{e}");
        assert!(!e.contains(secret), "the password leaked: {e}");
    }
    // fatal, not retried: a refused certificate stays refused until an operator acts
    let refused = pg::connect(
        &format!("{base}?sslmode=verify-full&sslrootcert={other}"),
        &session(),
    )
    .await
    .err()
    .unwrap();
    use tunnel_shared::fault::{Classify, ErrorClass};
    assert_eq!(refused.class(), ErrorClass::Fatal, "{refused}");
    // a client certificate: certuser logs in with it, and not without it
    let cert_url = server.url("certuser", "", "postgres").replace(":@", "@");
    let with_cert = format!(
        "{cert_url}?sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
        f("client.pem").display(),
        f("client.key").display()
    );
    assert_eq!(try_connect(&with_cert).await, Ok(true));
    let e = try_connect(&format!("{cert_url}?sslmode=verify-full&sslrootcert={ca}"))
        .await
        .unwrap_err();
    assert!(e.contains("certuser") || e.contains("certificate"), "{e}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
