//! The registry behind HTTP basic authentication (a private Apicurio with one user): the
//! client registers and reads schemas with the configured credentials, and a wrong password is
//! a fatal error that names the registry and what to check, never the password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tunnel_shared::config::Config;
use tunnel_shared::fault::{Classify, ErrorClass};
use tunnel_shared::registry::Registry;
use tunnel_shared::testkit::{unique, PrivateBroker, PrivateRegistry};

/// The `[registry]` section of a config with these settings, and the environment.
fn registry_config(url: &str, extra: &str, env: &[(&str, &str)]) -> Config {
    let text = format!(
        "[source]\nurl = \"postgres://r:pw@127.0.0.1:1/s\"\n[target]\nurl = \"postgres://w:pw@127.0.0.1:1/t\"\n\
         [kafka]\nbrokers = \"127.0.0.1:1\"\n[registry]\nurl = \"{url}\"\n{extra}\n[[tables]]\nname = \"media\"\n"
    );
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    Config::parse(&text, "test.toml", &env).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_authentication_with_a_password_from_a_file_or_the_environment() {
    let secret = "s3cret-registry-pw";
    let (broker, registry) = tokio::task::spawn_blocking(move || {
        let broker = PrivateBroker::start();
        let registry = PrivateRegistry::start_with_basic_auth(&broker.brokers(), "tunnel", secret);
        (broker, registry)
    })
    .await
    .unwrap();
    let url = registry.url();
    let schema = r#"{"type":"record","name":"k","fields":[{"name":"id","type":"long"}]}"#;
    let subject = unique("auth");

    // without credentials: refused, and said so
    let anonymous = Registry::new(&url).unwrap();
    let e = anonymous.register(&subject, schema).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    assert_eq!(e.class(), ErrorClass::Fatal);

    // the password from a file
    let dir = std::env::temp_dir().join(unique("tunnel_regauth"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), format!("{secret}\n")).unwrap();
    let c = registry_config(
        &url,
        &format!(
            "username = \"tunnel\"\npassword_file = \"{}\"",
            dir.join("pw").display()
        ),
        &[],
    );
    assert!(
        !format!("{:?}", c.registry).contains(secret),
        "Debug shows the password"
    );
    let id = Registry::from_config(&c.registry)
        .unwrap()
        .register(&subject, schema)
        .await
        .unwrap();
    // and from the environment, reading what was registered
    let c = registry_config(
        &url,
        "username = \"tunnel\"",
        &[("TUNNEL_REGISTRY_PASSWORD", secret)],
    );
    let r = Registry::from_config(&c.registry).unwrap();
    assert_eq!(r.latest_id(&subject).await.unwrap(), Some(id));
    assert!(r.schema(id).await.is_ok());

    // a wrong password: fatal, with what to check, without the password
    let c = registry_config(
        &url,
        "username = \"tunnel\"",
        &[("TUNNEL_REGISTRY_PASSWORD", "wrong-pw-xyz")],
    );
    let e = Registry::from_config(&c.registry)
        .unwrap()
        .register(&subject, schema)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("401") && text.contains("registry.username"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-pw-xyz") && !text.contains(secret),
        "{text}"
    );
    assert_eq!(e.class(), ErrorClass::Fatal);
    drop(registry);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_password_without_a_user_or_a_token_with_one_is_refused() {
    let text = "[source]\nurl = \"postgres://r:pw@h/s\"\n[target]\nurl = \"postgres://w:pw@h/t\"\n[kafka]\nbrokers = \"b:1\"\n[registry]\nurl = \"http://r\"\nusername = \"u\"\n[[tables]]\nname = \"m\"\n";
    let env = [("TUNNEL_REGISTRY_TOKEN".to_string(), "t0ken".to_string())];
    let e = Config::parse(text, "t.toml", &env).unwrap_err().to_string();
    assert!(e.contains("not both") && !e.contains("t0ken"), "{e}");
    let no_user = text.replace("username = \"u\"\n", "");
    let env = [("TUNNEL_REGISTRY_PASSWORD".to_string(), "pw-x".to_string())];
    let e = Config::parse(&no_user, "t.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs registry.username") && !e.contains("pw-x"),
        "{e}"
    );
}

#[test]
fn a_password_or_token_in_the_file_gives_way_to_the_environment_and_not_to_a_second_file() {
    let text = "[source]\nurl = \"postgres://r:pw@h/s\"\n[target]\nurl = \"postgres://w:pw@h/t\"\n[kafka]\nbrokers = \"b:1\"\n[registry]\nurl = \"http://r\"\nusername = \"u\"\npassword = \"in-file\"\n[[tables]]\nname = \"m\"\n";
    let c = Config::parse(text, "t.toml", &[]).unwrap();
    assert_eq!(c.registry.password.as_ref().unwrap().expose(), "in-file");
    assert!(!format!("{:?}", c.registry).contains("in-file"));
    let env = [("TUNNEL_REGISTRY_PASSWORD".to_string(), "env".to_string())];
    let c = Config::parse(text, "t.toml", &env).unwrap();
    assert_eq!(c.registry.password.as_ref().unwrap().expose(), "env");
    let both = text.replace(
        "password = \"in-file\"",
        "password = \"in-file\"\npassword_file = \"/run/secrets/x\"",
    );
    let e = Config::parse(&both, "t.toml", &[]).unwrap_err().to_string();
    assert!(e.contains("both set") && !e.contains("in-file"), "{e}");
    let token = text.replace(
        "username = \"u\"\npassword = \"in-file\"",
        "token = \"t0k\"",
    );
    let c = Config::parse(&token, "t.toml", &[]).unwrap();
    assert_eq!(c.registry.token.as_ref().unwrap().expose(), "t0k");
}
