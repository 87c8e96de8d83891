//! Unit tests of the link's configuration checks and packet arithmetic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn packet_length_counts_the_header_topic_packet_id_and_payload() {
    // 1 type byte + 1 length byte + (2 + 3 topic + 2 packet id + 10 payload)
    assert_eq!(publish_packet_len("a/b", 10), 19);
    // A remaining length of 128 needs two length bytes.
    assert_eq!(publish_packet_len("a/b", 121), 1 + 2 + 128);
}

#[test]
fn unusable_configurations_name_the_field() {
    let base = LinkConfig::new("127.0.0.1", 1883, "station-s1");
    assert!(base.validate().is_ok());
    let field_of = |config: LinkConfig| match config.validate() {
        Err(LinkError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    let mut c = base.clone();
    c.client_id.clear();
    assert_eq!(field_of(c), "client_id");
    let mut c = base.clone();
    c.subscriptions = vec!["a/#/b".into()];
    assert_eq!(field_of(c), "subscriptions");
    let mut c = base.clone();
    c.presence_topic = "a/+".into();
    assert_eq!(field_of(c), "presence_topic");
    let mut c = base.clone();
    c.keep_alive = Duration::from_millis(500);
    assert_eq!(field_of(c), "keep_alive");
    let mut c = base.clone();
    c.death_payload = vec![0; DEFAULT_MAX_PACKET_SIZE];
    assert_eq!(field_of(c), "death_payload");
    let mut c = base.clone();
    c.max_discard_size = 1024;
    assert_eq!(field_of(c), "max_discard_size");
    let mut c = base;
    c.tls = Some(TlsFiles {
        ca_file: "ca.pem".into(),
        client_cert: Some("c.pem".into()),
        client_key: None,
    });
    assert_eq!(field_of(c), "tls");
}

#[tokio::test]
async fn a_missing_tls_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LinkConfig::new("localhost", 8883, "station-s1");
    config.tls = Some(TlsFiles {
        ca_file: dir.path().join("missing-ca.pem"),
        client_cert: None,
        client_key: None,
    });
    let outbox = Outbox::open(dir.path()).unwrap();
    match Link::start(config, outbox, CancellationToken::new()) {
        Err(LinkError::TlsFile { path, .. }) => assert!(path.ends_with("missing-ca.pem")),
        other => panic!("expected a TLS file error, got {:?}", other.map(|_| ())),
    }
}
