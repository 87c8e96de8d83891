#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::device::Interface;
use std::time::Duration;

const EXAMPLE: &str = include_str!("../../ukey-agent.example.toml");

#[test]
fn example_config_parses_with_documented_defaults() {
    let config = Config::parse(EXAMPLE).expect("example parses");
    assert_eq!(config.station_id, "desk-01");
    assert_eq!(config.broker.topic_prefix, DEFAULT_TOPIC_PREFIX);
    assert_eq!(config.broker.keep_alive_secs, 30);
    assert_eq!(config.broker.port(), 8883, "TLS is on in the example");
    assert_eq!(config.pkcs11.scan_interval_ms, 500);
    assert_eq!(config.timeouts.certificates_secs, 600);
    assert_eq!(config.timeouts.resend_secs, 60);
    assert_eq!(config.timeouts.wedged_call_secs, 120);
    assert_eq!(config.inventory.expiry_warning_days, 30);
    assert_eq!(config.journal.compact_after_records, 256);
    assert_eq!(config.models.len(), 1);
    assert_eq!(config.models[0].vendor_id, 0x096e);
    assert_eq!(config.models[0].interface, crate::device::Interface::Pkcs11);
}

#[test]
fn minimal_config_takes_defaults() {
    let config = Config::parse(MINIMAL).unwrap();
    assert_eq!(config.broker.port(), 1883);
    assert_eq!(config.broker.client_id("d1"), "ukey-agent-d1");
    assert_eq!(config.usb.watcher, UsbWatcherKind::Rusb);
    assert_eq!(config.log_format, LogFormat::Human);
    assert!(config.panel.is_none());
    assert_eq!(config.timeouts.token_removed_secs, 300);
    assert_eq!(config.timeouts.wedged_call_secs, 120);
    assert_eq!(
        config.journal.compact_after_records,
        DEFAULT_COMPACT_AFTER_RECORDS
    );
}

const MINIMAL: &str = r#"
station_id = "d1"
[broker]
host = "127.0.0.1"
[pkcs11]
default_module = "/usr/lib/softhsm/libsofthsm2.so"
[trust]
ca_certs = ["ca.pem"]
platform_signing_key = "sign.pem"
platform_sealing_key = "seal.pem"
station_key = "station.pem"
"#;

#[test]
fn unknown_key_is_named() {
    let text = MINIMAL.replace("[broker]", "[broker]\nhots = \"x\"");
    let err = Config::parse(&text).unwrap_err();
    assert!(err.contains("hots"), "{err}");
}

#[test]
fn check_names_each_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let text = MINIMAL.replace("station_id = \"d1\"", "station_id = \"d 1/+\"");
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.path().join("sign.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let err = Config::load_checked(&path).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"station_id"), "{keys:?}");
    assert!(keys.contains(&"trust.ca_certs[0]"), "{keys:?}");
    assert!(keys.contains(&"trust.station_key"), "{keys:?}");
    let sign = problems
        .iter()
        .find(|p| p.key == "trust.platform_signing_key")
        .unwrap();
    assert!(sign.problem.contains("expected PUBLIC KEY"), "{sign}");
    let ca = problems
        .iter()
        .find(|p| p.key == "trust.ca_certs[0]")
        .unwrap();
    assert!(ca.problem.contains("no such file"), "{ca}");
    // Relative paths were resolved against the file's folder.
    assert!(
        ca.problem.contains(&dir.path().display().to_string()),
        "{ca}"
    );
}

#[test]
fn a_zero_wedged_call_limit_is_reported() {
    let text = format!("{MINIMAL}[timeouts]\nwedged_call_secs = 0\n");
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.timeouts.wedged_call(), Duration::ZERO);
    let problems = config.check();
    let p = problems
        .iter()
        .find(|p| p.key == "timeouts.wedged_call_secs")
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(p.problem.contains("at least 1"), "{p}");
    let ok = Config::parse(&format!("{MINIMAL}[timeouts]\nwedged_call_secs = 45\n")).unwrap();
    assert_eq!(ok.timeouts.wedged_call(), Duration::from_secs(45));
    assert!(
        !ok.check()
            .iter()
            .any(|p| p.key == "timeouts.wedged_call_secs"),
        "{:?}",
        ok.check()
    );
}

#[test]
fn a_journal_threshold_of_zero_is_reported() {
    let config =
        Config::parse(&format!("{MINIMAL}[journal]\ncompact_after_records = 0\n")).unwrap();
    let problems = config.check();
    assert!(
        problems
            .iter()
            .any(|p| p.key == "journal.compact_after_records"),
        "{problems:?}"
    );
    let config =
        Config::parse(&format!("{MINIMAL}[journal]\ncompact_after_records = 8\n")).unwrap();
    assert_eq!(config.journal.compact_after_records, 8);
    assert!(
        !config
            .check()
            .iter()
            .any(|p| p.key == "journal.compact_after_records")
    );
}

#[test]
fn partial_client_tls_is_reported() {
    let text = MINIMAL.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\n[broker.tls]\nca_file = \"ca.pem\"\nclient_cert = \"c.pem\"",
    );
    let config = Config::parse(&text).unwrap();
    let problems = config.check();
    assert!(
        problems.iter().any(|p| p.key == "broker.tls.client_key"),
        "{problems:?}"
    );
}

/// `MINIMAL` with `[broker]`'s lines replaced by `broker`.
fn with_broker(broker: &str) -> Config {
    Config::parse(&MINIMAL.replace(
        "[broker]\nhost = \"127.0.0.1\"\n",
        &format!("[broker]\n{broker}\n"),
    ))
    .unwrap()
}

fn problem_at<'a>(problems: &'a [ConfigProblem], key: &str) -> Option<&'a ConfigProblem> {
    problems.iter().find(|p| p.key == key)
}

#[test]
fn a_broker_off_loopback_needs_tls_or_an_explicit_plaintext_allowance() {
    for host in ["192.0.2.10", "mqtt.platform.example", "[fd00::5]:1883"] {
        let config = with_broker(&format!("hosts = [{host:?}]"));
        let problems = config.check();
        let p =
            problem_at(&problems, "broker.tls").unwrap_or_else(|| panic!("{host}: {problems:?}"));
        assert!(p.problem.contains("broker.allow_plaintext = true"), "{p}");
        assert!(
            p.problem
                .contains(host.trim_start_matches('[').split(']').next().unwrap()),
            "{p}"
        );
        assert!(config.warnings().is_empty());
    }
    // Loopback in clear is fine, and says nothing.
    for host in ["127.0.0.1", "localhost", "::1"] {
        let config = with_broker(&format!("host = {host:?}"));
        assert!(
            problem_at(&config.check(), "broker.tls").is_none(),
            "{host}"
        );
        assert!(config.warnings().is_empty(), "{host}");
    }
    // Allowed: accepted with one warning naming the address.
    let config = with_broker("host = \"192.0.2.10\"\nallow_plaintext = true");
    assert!(problem_at(&config.check(), "broker.tls").is_none());
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key, "broker.allow_plaintext");
    assert!(
        warnings[0].problem.contains("192.0.2.10:1883"),
        "{}",
        warnings[0]
    );
    // With TLS the allowance is moot: no warning.
    let config = with_broker(
        "host = \"192.0.2.10\"\nallow_plaintext = true\n[broker.tls]\nca_file = \"ca.pem\"",
    );
    assert!(config.warnings().is_empty());
    assert!(problem_at(&config.check(), "broker.tls").is_none());
}

#[test]
fn broker_addresses_come_from_host_or_hosts() {
    let config =
        with_broker("hosts = [\"127.0.0.1:1884\", \"localhost\", \"[::1]:1885\"]\nport = 1999");
    let addresses: Vec<String> = config
        .broker
        .addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        addresses,
        ["127.0.0.1:1884", "localhost:1999", "[::1]:1885"]
    );
    assert!(
        config.check().iter().all(|p| !p.key.starts_with("broker")),
        "{:?}",
        config.check()
    );

    let both = with_broker("host = \"127.0.0.1\"\nhosts = [\"127.0.0.1\"]");
    assert!(problem_at(&both.check(), "broker.hosts").is_some());
    let neither = with_broker("port = 1883");
    assert!(problem_at(&neither.check(), "broker.host").is_some());
    let bad = with_broker("hosts = [\"127.0.0.1\", \"127.0.0.1:x\"]");
    let p = problem_at(&bad.check(), "broker.hosts[1]")
        .cloned()
        .unwrap();
    assert!(p.problem.contains("not a port"), "{p}");
}

#[test]
fn the_password_file_is_checked_and_its_content_never_shown() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.password");
    std::fs::write(&file, "s3cret-Pw\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = |extra: &str| {
        with_broker(&format!(
            "host = \"127.0.0.1\"\n{extra}password_file = {:?}",
            file.display().to_string()
        ))
    };
    let good = config("username = \"desk-01\"\n");
    assert!(
        good.check().iter().all(|p| !p.key.starts_with("broker")),
        "{:?}",
        good.check()
    );
    assert_eq!(read_password(&file).ok().unwrap().as_str(), "s3cret-Pw");

    let no_user = config("");
    assert!(problem_at(&no_user.check(), "broker.username").is_some());

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let problems = good.check();
    let p = problem_at(&problems, "broker.password_file").unwrap_or_else(|| panic!("{problems:?}"));
    assert!(p.problem.contains("every user may read it"), "{p}");

    std::fs::write(&file, "\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = problem_at(&good.check(), "broker.password_file")
        .cloned()
        .unwrap();
    assert!(p.problem.contains("is empty"), "{p}");

    std::fs::remove_file(&file).unwrap();
    let p = problem_at(&good.check(), "broker.password_file")
        .cloned()
        .unwrap();
    assert!(p.problem.contains("no such file"), "{p}");
    for p in good.check() {
        assert!(!p.problem.contains("s3cret"), "{p}");
    }
}

#[test]
fn a_model_interface_defaults_to_pkcs11_and_skf_is_refused_for_now() {
    let model = |interface: &str| {
        format!(
            "{MINIMAL}[[models]]\nname = \"K3\"\nvendor_id = 0x096e\nproduct_id = 0x0702\n\
             module = \"/usr/lib/softhsm/libsofthsm2.so\"\n{interface}"
        )
    };
    let config = Config::parse(&model("")).unwrap();
    assert_eq!(config.models[0].interface, Interface::Pkcs11);
    assert!(
        !config
            .check()
            .iter()
            .any(|p| p.key == "models[0].interface"),
        "{:?}",
        config.check()
    );
    let config = Config::parse(&model("interface = \"pkcs11\"\n")).unwrap();
    assert_eq!(config.models[0].interface, Interface::Pkcs11);
    let config = Config::parse(&model("interface = \"skf\"\n")).unwrap();
    assert_eq!(config.models[0].interface, Interface::Skf);
    let problems = config.check();
    let p = problems
        .iter()
        .find(|p| p.key == "models[0].interface")
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(p.problem.contains("\"skf\" is not yet supported"), "{p}");
    let err = Config::parse(&model("interface = \"pkcs#11\"\n")).unwrap_err();
    assert!(err.contains("interface"), "{err}");
}

#[test]
fn an_audit_file_size_below_the_minimum_is_reported() {
    let config = Config::parse(MINIMAL).unwrap();
    assert_eq!(
        config.audit.max_file_bytes,
        crate::audit::DEFAULT_MAX_FILE_BYTES
    );
    let config = Config::parse(&format!("{MINIMAL}[audit]\nmax_file_bytes = 1000\n")).unwrap();
    let problems = config.check();
    assert!(
        problems.iter().any(|p| p.key == "audit.max_file_bytes"),
        "{problems:?}"
    );
    let config = Config::parse(&format!("{MINIMAL}[audit]\nmax_file_bytes = 1048576\n")).unwrap();
    assert_eq!(config.audit.max_file_bytes, 1_048_576);
    assert!(
        !config
            .check()
            .iter()
            .any(|p| p.key == "audit.max_file_bytes")
    );
}

#[test]
fn trust_defaults_and_several_signing_keys_with_bad_entries_named() {
    let config = Config::parse(MINIMAL).unwrap();
    assert_eq!(config.trust.max_job_lifetime_days, 7);
    assert_eq!(config.trust.max_job_lifetime(), time::Duration::days(7));
    assert_eq!(config.trust.rejections_per_minute, 10);
    let dir = tempfile::tempdir().unwrap();
    let p256_pub = |name: &str| {
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let key = p256::SecretKey::generate_from_rng(&mut rand::rng());
        let pem = key.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (old, new) = (p256_pub("old.pem"), p256_pub("new.pem"));
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let text = MINIMAL
        .replace(
            "platform_signing_key = \"sign.pem\"\n",
            &format!(
                "platform_signing_key = {old:?}\nplatform_signing_key_id = \"k-2025\"\n\
                 platform_signing_keys = [{{ kid = \"k-2026\", file = {new:?} }}, \
                 {{ kid = \"k-2025\", file = {new:?} }}, {{ kid = \"k-bad\", file = \"garbage.pem\" }}]\n\
                 max_job_lifetime_days = 0\n"
            ),
        );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    let keys = config.trust.signing_keys();
    let kids: Vec<&str> = keys.iter().map(|(_, kid, _)| *kid).collect();
    assert_eq!(kids, ["k-2025", "k-2026", "k-2025", "k-bad"]);
    let problems = config.check();
    let about = |key: &str| {
        problems
            .iter()
            .filter(|p| p.key == key)
            .map(|p| p.problem.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        about("trust.platform_signing_key").is_empty(),
        "{problems:?}"
    );
    assert!(
        about("trust.platform_signing_keys[0]").is_empty(),
        "{problems:?}"
    );
    assert!(
        about("trust.platform_signing_keys[1]")
            .iter()
            .any(|p| p.contains("\"k-2025\" is listed twice")),
        "{problems:?}"
    );
    assert!(
        about("trust.platform_signing_keys[2]")
            .iter()
            .any(|p| p.contains("garbage.pem")),
        "{problems:?}"
    );
    assert!(
        !about("trust.max_job_lifetime_days").is_empty(),
        "{problems:?}"
    );
    // Without any signing key the configuration says so.
    let none =
        Config::parse(&MINIMAL.replace("platform_signing_key = \"sign.pem\"\n", "")).unwrap();
    assert!(
        none.check()
            .iter()
            .any(|p| p.key == "trust.platform_signing_key"
                && p.problem.contains("no platform signing key")),
    );
}

#[test]
fn check_names_a_short_rsa_platform_key_with_its_file_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("short.key");
    let public = dir.path().join("short.pub.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
        ])
        .arg(&private)
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(made, "openssl failed");
    let text = MINIMAL
        .replace("\"sign.pem\"", &format!("{public:?}"))
        .replace("\"seal.pem\"", &format!("{public:?}"));
    let problems = Config::parse(&text).unwrap().check();
    for key in ["trust.platform_signing_key", "trust.platform_sealing_key"] {
        let p = problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key}: {problems:?}"));
        assert!(p.problem.contains("1024 bits"), "{p}");
        assert!(p.problem.contains("short.pub.pem"), "{p}");
    }
}

/// Files a full configuration names, each holding what `check` expects (keys mode 0600).
fn world_for_round_trip(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let cert = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    // check-config reads the platform's public keys (their kind and size): a real one.
    let public = {
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let key = p256::SecretKey::generate_from_rng(&mut rand::rng());
        key.public_key().to_public_key_pem(LineEnding::LF).unwrap()
    };
    let public = public.as_str();
    let private = "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n";
    let module = write("module.so", "a module", 0o644);
    let rack = dir.join("rack");
    std::fs::create_dir_all(&rack).unwrap();
    format!(
        "station_id = \"desk-07\"\nstate_dir = {state:?}\nlog_format = \"json\"\n\
         log_level = \"info,ukey_agent=debug\"\n\
         [broker]\nhosts = [\"127.0.0.1:1884\", \"[::1]\"]\nport = 8884\n\
         client_id = \"desk-07-client\"\nkeep_alive_secs = 15\ntopic_prefix = \"acme/ukey/v2\"\n\
         username = \"desk-07\"\npassword_file = {password:?}\n\
         [broker.tls]\nca_file = {cert:?}\nclient_cert = {cert:?}\nclient_key = {key:?}\n\
         [pkcs11]\ndefault_module = {module:?}\nscan_interval_ms = 75\n\
         [[models]]\nname = \"Ukey-Sim\"\nvendor_id = 0x5553\nproduct_id = 0x4b01\n\
         module = {module:?}\npin_min = 8\npin_max = 12\n\
         [usb]\nwatcher = \"sim\"\nsim_dir = {rack:?}\narrival_timeout_secs = 3\n\
         [trust]\nca_certs = [{cert:?}]\nplatform_signing_key = {public:?}\n\
         platform_signing_key_id = \"platform-2\"\nplatform_sealing_key = {public:?}\n\
         station_key = {key:?}\n\
         [timeouts]\ncertificates_secs = 11\ntoken_removed_secs = 12\nbind_ack_secs = 13\n\
         target_token_secs = 14\nshutdown_grace_secs = 15\nresend_secs = 16\nwedged_call_secs = 17\n\
         [inventory]\nexpiry_warning_days = 45\n\
         [journal]\ncompact_after_records = 64\n\
         [panel]\ndevice = \"/dev/ttyACM3\"\nbaud = 57600\n\
         [audit]\nmax_file_bytes = 1048576\n",
        state = dir.join("state").display().to_string(),
        password = write("broker.password", "s3cret-Pw\n", 0o600),
        cert = write("ca.pem", cert, 0o644),
        public = write("public.pem", public, 0o644),
        key = write("station.key", private, 0o600),
        rack = rack.display().to_string(),
    )
}

#[test]
fn a_written_configuration_parses_back_equal_and_passes_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let full = Config::parse(&world_for_round_trip(dir.path())).unwrap();
    assert_eq!(full.check(), Vec::new(), "the hand-written one is valid");
    for config in [full, Config::parse(MINIMAL).unwrap()] {
        let text = config.to_toml().unwrap();
        let back = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, config, "{text}");
    }
    // Written to a file, `check-config`'s own loader accepts it.
    let written = dir.path().join("agent.toml");
    let config = Config::parse(&world_for_round_trip(dir.path())).unwrap();
    std::fs::write(&written, config.to_toml().unwrap()).unwrap();
    let loaded = Config::load_checked(&written).unwrap();
    assert_eq!(loaded, config);
    assert!(!config.to_toml().unwrap().contains("s3cret"));
}

#[test]
fn absent_optional_keys_stay_absent_when_written() {
    let text = Config::parse(MINIMAL).unwrap().to_toml().unwrap();
    for key in [
        "client_id",
        "username",
        "password_file",
        "[panel]",
        "[broker.tls]",
        "log_level",
    ] {
        assert!(!text.contains(key), "{key} in\n{text}");
    }
}

#[test]
fn the_example_configuration_survives_a_round_trip() {
    let config = Config::parse(EXAMPLE).unwrap();
    let back = Config::parse(&config.to_toml().unwrap()).unwrap();
    assert_eq!(back, config);
}

#[test]
fn a_built_configuration_equals_the_file_holding_only_its_required_keys() {
    let built = Config::new(
        "d1",
        BrokerConfig::new("127.0.0.1", None),
        Pkcs11Config::new("/usr/lib/softhsm/libsofthsm2.so"),
        TrustConfig::new(
            vec!["ca.pem".into()],
            "sign.pem",
            "platform",
            "seal.pem",
            "station.pem",
        ),
    );
    assert_eq!(built, Config::parse(MINIMAL).unwrap());
    assert_eq!(
        PanelConfig::new("/dev/x"),
        toml::from_str::<PanelConfig>("device = \"/dev/x\"").unwrap()
    );
}

#[test]
fn rack_positions_are_read_and_checked() {
    let text = format!(
        "{MINIMAL}[[rack.positions]]\nport = \"1-1.2\"\nposition = 0\n\n[[rack.positions]]\nport = \"1-1.3\"\nposition = 1\n"
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.rack.position_of("1-1.3"), Some(1));
    assert_eq!(config.rack.position_of("1-1.4"), None);
    assert!(!config.check().iter().any(|p| p.key.starts_with("rack.")));
    let bad = format!(
        "{MINIMAL}[[rack.positions]]\nport = \"usb3\"\nposition = 0\n\n[[rack.positions]]\nport = \"1-1.3\"\nposition = 0\n\n[[rack.positions]]\nport = \"1-1.3\"\nposition = 64\n"
    );
    let problems = Config::parse(&bad).unwrap().check();
    let find = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{key} in {problems:?}"))
            .problem
            .clone()
    };
    assert!(find("rack.positions[0].port").contains("not a USB port path"));
    assert!(find("rack.positions[1].position").contains("two ports"));
    assert!(find("rack.positions[2].port").contains("listed twice"));
    assert!(find("rack.positions[2].position").contains("beyond"));
}
