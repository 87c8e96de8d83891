//! How the link connects: the MQTT options every connection attempt is made with (whichever
//! broker address it goes to), the TLS files and the password read once at start, and the
//! broker's refusals put in words that name the configuration keys to look at.

use std::time::Duration;

use rumqttc::{ConnectionError, LastWill, MqttOptions, TlsConfiguration, Transport};

use super::{BrokerAddress, Credentials, LinkError, TlsFiles};
use crate::config::{PasswordFileProblem, read_password};

/// Capacity of rumqttc's request channel; the driver never waits on it.
pub(super) const REQUEST_CAPACITY: usize = 128;

pub(super) fn tls_configuration(tls: &TlsFiles) -> Result<TlsConfiguration, LinkError> {
    // rumqttc builds rustls configurations with the process-wide default provider. An error
    // means a provider is installed already, which is what is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| LinkError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let ca = read(&tls.ca_file)?;
    let client_auth = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })
}

/// What every connection is made with, whichever address it goes to.
pub(super) struct Recipe {
    pub(super) client_id: String,
    pub(super) keep_alive: Duration,
    pub(super) max_packet_size: usize,
    pub(super) will: LastWill,
    pub(super) transport: Option<Transport>,
    /// User name and password. The password lives here (zeroed on drop) and in the
    /// options of the current connection attempt, and is never formatted.
    pub(super) login: Option<(String, zeroize::Zeroizing<String>)>,
}

impl Recipe {
    pub(super) fn options(&self, address: &BrokerAddress) -> MqttOptions {
        let mut options =
            MqttOptions::new(self.client_id.clone(), address.host.clone(), address.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(self.max_packet_size, self.max_packet_size)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_last_will(self.will.clone());
        if let Some(transport) = &self.transport {
            options.set_transport(transport.clone());
        }
        if let Some((username, password)) = &self.login {
            options.set_credentials(username.clone(), password.as_str());
        }
        options
    }
}

pub(super) fn login(
    credentials: &Credentials,
) -> Result<(String, zeroize::Zeroizing<String>), LinkError> {
    let password = match &credentials.password_file {
        None => zeroize::Zeroizing::new(String::new()),
        Some(path) => read_password(path).map_err(|problem| LinkError::PasswordFile {
            path: path.clone(),
            reason: match problem {
                PasswordFileProblem::Io(e) => e.to_string(),
                PasswordFileProblem::Empty => "the file is empty".into(),
            },
        })?,
    };
    Ok((credentials.username.clone(), password))
}

/// A refusal by the broker in words an operator acts on, naming the keys to look at.
pub(super) fn describe_error(error: &ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as Code;
    match error {
        // MQTT 3.1.1 brokers answer a wrong password with either code (Mosquitto: 5).
        ConnectionError::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => {
            "the broker refused the station's login: wrong user name or password, or not \
             authorized (broker.username, broker.password_file)"
                .into()
        }
        ConnectionError::ConnectionRefused(Code::BadClientId) => {
            "the broker refused the client id (broker.client_id)".into()
        }
        other => other.to_string(),
    }
}
