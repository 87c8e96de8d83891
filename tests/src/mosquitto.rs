//! A real Mosquitto broker for tests: free loopback port, persistence on (or off, to lose
//! every session when killed), killable.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A Mosquitto broker bound to `127.0.0.1` on a free port, with persistence in its own
/// temporary folder so that sessions and queued QoS 1 messages survive [`Mosquitto::kill`] +
/// [`Mosquitto::restart`] as far as Mosquitto's last autosave (every second here).
pub struct Mosquitto {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    /// A configuration of the caller's (see [`Mosquitto::start_with_config`]) instead of the
    /// harness's own.
    config: Option<String>,
    /// A password file (made with `mosquitto_passwd`): clients must log in.
    password_file: Option<PathBuf>,
    /// `persistence false`: a restart forgets every session, its subscriptions and queued
    /// messages (see [`Mosquitto::start_forgetful`]).
    forgetful: bool,
}

fn mosquitto_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from(crate::require_tool("mosquitto"))
}

impl Mosquitto {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with_users(&[])
    }

    /// Starts a broker without persistence: after [`Mosquitto::kill`] and
    /// [`Mosquitto::restart`] it knows no session, so whatever is published to a client
    /// before that client subscribes again is dropped (and still acknowledged).
    pub fn start_forgetful() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        Mosquitto::start_in(dir, None, None, true)
    }

    /// Starts a broker that admits only these users (name, password), from a password file
    /// made by `mosquitto_passwd`; with none, anyone may connect.
    pub fn start_with_users(users: &[(&str, &str)]) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let password_file = (!users.is_empty()).then(|| write_password_file(dir.path(), users));
        Mosquitto::start_in(dir, None, password_file, false)
    }

    /// Starts a broker with the configuration `text`, in which `@PORT@` stands for the free
    /// port to listen on. Its folder ([`Mosquitto::dir`]) holds the files the caller put
    /// there (certificates, ACLs), with read access for all, and an empty, writable `db/`.
    pub fn start_with_config(dir: TempDir, text: &str) -> Mosquitto {
        Mosquitto::start_in(dir, Some(text.to_owned()), None, false)
    }

    fn start_in(
        dir: TempDir,
        config: Option<String>,
        password_file: Option<PathBuf>,
        forgetful: bool,
    ) -> Mosquitto {
        let mut broker = Mosquitto {
            dir,
            port: 0,
            child: None,
            config,
            password_file,
            forgetful,
        };
        let mut last_err = String::new();
        // A port found free can be taken before mosquitto binds it: try a few.
        for _ in 0..5 {
            broker.port = crate::free_port();
            match broker.spawn() {
                Ok(()) => return broker,
                Err(e) => {
                    last_err = e;
                    broker.kill();
                }
            }
        }
        panic!("mosquitto did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let persist = self.dir.path().join("db");
        std::fs::create_dir_all(&persist).map_err(|e| e.to_string())?;
        // Started as root, mosquitto drops to its own user before it reads its files and
        // writes its log and database: let it read these throwaway test files, write its
        // database and its log (without this, it only logs "Permission denied" — nowhere —
        // and runs without persistence).
        use std::os::unix::fs::PermissionsExt;
        let open = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        open(self.dir.path(), 0o755)?;
        open(&persist, 0o777)?;
        let log = self.dir.path().join("mosquitto.log");
        if !log.exists() {
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        }
        open(&log, 0o666)?;
        if let Some(template) = &self.config {
            for entry in std::fs::read_dir(self.dir.path()).map_err(|e| e.to_string())? {
                let path = entry.map_err(|e| e.to_string())?.path();
                if path.is_file() {
                    open(&path, if path == log { 0o666 } else { 0o644 })?;
                }
            }
            let text = template.replace("@PORT@", &self.port.to_string());
            return self.run_with(&text);
        }
        let access = match &self.password_file {
            Some(file) => format!("allow_anonymous false\npassword_file {}\n", file.display()),
            None => "allow_anonymous true\n".to_owned(),
        };
        let text = format!(
            "listener {port} 127.0.0.1\n\
             {access}\
             persistence {persistence}\n\
             persistence_location {loc}/\n\
             autosave_interval 1\n\
             max_queued_messages 100000\n\
             set_tcp_nodelay true\n\
             log_dest file {log}\n\
             log_type error\nlog_type warning\nlog_type notice\n",
            port = self.port,
            persistence = !self.forgetful,
            loc = persist.display(),
            log = self.dir.path().join("mosquitto.log").display(),
        );
        self.run_with(&text)
    }

    /// The broker's folder (its configuration, log and database).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn run_with(&mut self, text: &str) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run mosquitto: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("mosquitto exited with {status}: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "mosquitto did not listen on port {} within 10 s",
            self.port
        ))
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills the broker with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same persistence folder.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mosquitto did not restart on port {}: {last}", self.port);
    }
}

/// A Mosquitto password file for `users` in `dir`, readable by the broker after it drops
/// root's privileges (these are throwaway test passwords).
fn write_password_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("passwords");
    let tool = crate::require_tool("mosquitto_passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new(tool);
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(&file)
            .args([user, password])
            .output()
            .unwrap_or_else(|e| panic!("cannot run mosquitto_passwd: {e}"));
        assert!(
            out.status.success(),
            "mosquitto_passwd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (path, mode) in [(dir, 0o755), (file.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
    file
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
