//! The running agent's local control socket: `control.sock` in the state folder (mode
//! `0600`, so only the agent's user and root reach it), through which `ukey-agent operator
//! sign-in ID` / `sign-out` / `show` talk to the daemon.
//!
//! One request a connection: the client writes one JSON line ([`Request`]'s wire form,
//! [`Command`]), the agent answers one JSON line ([`Reply`]) and closes. The listener only
//! reads lines and hands them to the daemon's loop, which decides; nothing here touches the
//! desk's state. A client that finds no socket, or a socket nobody listens on, is told that
//! no agent runs for that state folder.
//!
//! What it does not do: authenticate the person at the keyboard (whoever has the agent's
//! user account can sign anyone in; the audit log records each sign-in), or serve anything
//! over the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The socket's file name inside the state folder.
pub const SOCKET_FILE: &str = "control.sock";
/// Longest request line accepted.
const MAX_LINE: usize = 1024;
/// Longest operator id (staff ids, badge numbers).
pub const MAX_OPERATOR_CHARS: usize = 64;

/// The socket of the agent whose state folder is `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// An operator signs in at the desk (replacing whoever was signed in).
    SignIn {
        /// The staff id.
        operator: String,
    },
    /// The operator signs out.
    SignOut,
    /// Who is signed in.
    Show,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the command was carried out.
    pub ok: bool,
    /// What happened, for people.
    pub message: String,
    /// Who is signed in after the command.
    #[serde(default)]
    pub operator: Option<String>,
}

/// A command received, with the way back to its client.
#[derive(Debug)]
pub struct Request {
    /// What the client asks.
    pub command: Command,
    /// Where the daemon sends its answer.
    pub reply: oneshot::Sender<Reply>,
}

/// Checks an operator id: 1-64 characters of letters, digits, `.`, `_`, `-`, `@`, and no run
/// of 11 or more digits (an ID-card or phone number has no place in the audit log).
pub fn check_operator(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the operator id is empty".into());
    }
    if id.chars().count() > MAX_OPERATOR_CHARS {
        return Err(format!(
            "the operator id is longer than {MAX_OPERATOR_CHARS} characters"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "the operator id may hold letters, digits, '.', '_', '-' and '@' only, not {c:?}"
        ));
    }
    if ukey_protocol::receipt::check_no_personal_digits("operator", id).is_err() {
        return Err(
            "the operator id looks like a phone or ID-card number (11 or more digits in a row); use a staff id"
                .into(),
        );
    }
    Ok(())
}

/// Binds the socket in `state_dir` (a stale one left by a crash is replaced: the caller holds
/// the state folder's lock) with mode `0600`, and forwards each request to `requests` until
/// `shutdown`; the socket file is removed then.
pub fn listen(
    state_dir: &Path,
    requests: mpsc::Sender<Request>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, requests.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn serve(stream: UnixStream, requests: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64 + 1));
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) if line.len() <= MAX_LINE => match serde_json::from_str::<Command>(&line) {
            Ok(command) => {
                let (tx, rx) = oneshot::channel();
                let sent = requests.send(Request { command, reply: tx }).await;
                match (sent, rx.await) {
                    (Ok(()), Ok(reply)) => reply,
                    _ => failed("the agent is stopping"),
                }
            }
            Err(e) => failed(&format!("not a control command: {e}")),
        },
        Ok(Ok(_)) => failed("request line too long"),
        Ok(Err(e)) => failed(&format!("cannot read the request: {e}")),
        Err(_) => failed("no request within 5 s"),
    };
    if let Ok(mut bytes) = serde_json::to_vec(&reply) {
        bytes.push(b'\n');
        let _ = write.write_all(&bytes).await;
    }
}

fn failed(message: &str) -> Reply {
    Reply {
        ok: false,
        message: message.to_owned(),
        operator: None,
    }
}

/// Why a command could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No agent listens on the state folder's socket.
    #[error("no agent is running for state folder {state_dir} (no one listens on {socket})")]
    NotRunning {
        /// The state folder.
        state_dir: PathBuf,
        /// The socket.
        socket: PathBuf,
    },
    /// The socket could not be used.
    #[error("control socket {socket}: {source}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The agent's answer could not be read.
    #[error("control socket {socket}: unreadable answer: {detail}")]
    Answer {
        /// The socket.
        socket: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Sends `command` to the agent of `state_dir` and returns its answer (blocking, at most
/// 10 s).
pub fn send(state_dir: &Path, command: &Command) -> Result<Reply, ControlError> {
    use std::io::{BufRead, Write};
    let socket = socket_path(state_dir);
    let io = |source| ControlError::Io {
        socket: socket.clone(),
        source,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning {
                state_dir: state_dir.to_owned(),
                socket,
            });
        }
        Err(e) => return Err(io(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(command).map_err(|e| ControlError::Answer {
        socket: socket.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Answer {
        socket: socket.clone(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn operator_ids_are_staff_ids_not_personal_numbers() {
        assert!(check_operator("staff-7").is_ok());
        assert!(check_operator("li.wei@desk1").is_ok());
        assert!(check_operator("").is_err());
        assert!(check_operator("has space").is_err());
        assert!(check_operator(&"a".repeat(65)).is_err());
        // An ID-card number, a mobile number.
        assert!(check_operator("11010519491231002X").is_err());
        assert!(check_operator("13800138000").is_err());
    }

    #[test]
    fn commands_have_a_stable_wire_form() {
        let line = serde_json::to_string(&Command::SignIn {
            operator: "staff-7".into(),
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"sign-in","operator":"staff-7"}"#);
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"op":"sign-out"}"#).unwrap(),
            Command::SignOut
        );
    }

    #[tokio::test]
    async fn a_command_reaches_the_daemon_and_its_answer_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let task = listen(dir.path(), tx, stop.clone()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let state = dir.path().to_owned();
        let client = tokio::task::spawn_blocking(move || send(&state, &Command::Show));
        let request = rx.recv().await.unwrap();
        assert_eq!(request.command, Command::Show);
        request
            .reply
            .send(Reply {
                ok: true,
                message: "nobody".into(),
                operator: None,
            })
            .unwrap();
        let reply = client.await.unwrap().unwrap();
        assert!(reply.ok);
        assert_eq!(reply.message, "nobody");
        stop.cancel();
        task.await.unwrap();
        assert!(!socket_path(dir.path()).exists());
        // Nobody listens now: the client says so.
        let err = send(dir.path(), &Command::Show).unwrap_err();
        assert!(matches!(err, ControlError::NotRunning { .. }), "{err}");
        assert!(err.to_string().contains("no agent is running"), "{err}");
    }
}
