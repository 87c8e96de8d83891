//! The demo's files before anything runs: where hsm-sim's module is, the rack's folder
//! handed to the module through `HSM_SIM_DIR` (by executing the demo again with it set),
//! the temporary folder of a run without `--dir`, the folder's preparation and the log.
//!
//! What it does not do: start the broker, the platform or the agent (see `station`).

use std::path::{Path, PathBuf};

use hsm_sim::rack::{DIR_ENV, Rack, RackConfig};

use super::error::DemoError;
use super::{FILES, MODULE_FILE};

/// hsm-sim's module built with the running binary: next to it, or in `deps/` beside it
/// (where cargo leaves a dependency's shared library when only `ukey-demo` was built); the
/// newer of the two when both exist, so a module rebuilt with the demo wins over a stale one.
pub(crate) fn module_next_to_binary() -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().map_err(|e| DemoError::folder("the running binary", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| DemoError::folder(&exe, "has no folder"))?;
    let beside = dir.join(MODULE_FILE);
    let deps = dir.join("deps").join(MODULE_FILE);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Ok(match (modified(&beside), modified(&deps)) {
        (Some(a), Some(b)) if b > a => deps,
        (None, Some(_)) => deps,
        _ => beside,
    })
}

/// The environment variable that marks a temporary folder this run made before it executed
/// itself again (see [`ensure_module_env`]): the folder is the run's to remove.
const TEMP_ENV: &str = "UKEY_DEMO_TEMP_DIR";

/// Makes sure hsm-sim's module, loaded by the agent in this process, finds the rack in
/// `root`: it reads `HSM_SIM_DIR` at `C_Initialize`. When the variable already names `root`
/// this returns at once; otherwise the demo executes itself again (same process id, same
/// arguments, so signals and the exit status stay the caller's) with the variable set, and
/// returns only if that fails. `temp` says that `root` is a temporary folder of this run.
pub(crate) fn ensure_module_env(root: &Path, temp: bool) -> Result<(), DemoError> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(DIR_ENV).is_some_and(|d| Path::new(&d) == root) {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| DemoError::folder("the running binary", e))?;
    let mut again = std::process::Command::new(&exe);
    again.args(std::env::args_os().skip(1)).env(DIR_ENV, root);
    if temp {
        again.env(TEMP_ENV, root);
    } else {
        again.env_remove(TEMP_ENV);
    }
    let e = again.exec();
    Err(DemoError::folder(
        &exe,
        format!("cannot execute it again with {DIR_ENV} set: {e}"),
    ))
}

/// A temporary folder of this run: removed when dropped, unless kept for its log.
#[derive(Debug)]
pub(crate) struct TempFolder {
    path: Option<PathBuf>,
}

impl TempFolder {
    /// A new folder `ukey-demo-XXXX` in the system's temporary folder (`$TMPDIR`).
    pub(crate) fn create() -> Result<TempFolder, DemoError> {
        let t = tempfile::Builder::new()
            .prefix("ukey-demo-")
            .tempdir()
            .map_err(|e| DemoError::folder(std::env::temp_dir(), e))?;
        Ok(TempFolder {
            path: Some(t.keep()),
        })
    }

    /// The temporary folder this process was executed again with, if any.
    pub(crate) fn adopted() -> Option<TempFolder> {
        let temp = std::env::var_os(TEMP_ENV)?;
        let dir = std::env::var_os(DIR_ENV)?;
        (temp == dir && Path::new(&temp).is_dir()).then(|| TempFolder {
            path: Some(PathBuf::from(temp)),
        })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Keeps the folder (a failed run's log stays readable); returns its path.
    pub(crate) fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }

    /// Removes the folder now, reporting a failure.
    pub(crate) fn close(mut self) -> std::io::Result<()> {
        match self.path.take() {
            Some(p) => std::fs::remove_dir_all(p),
            None => Ok(()),
        }
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Prepares the demo's folder: the rack in `root` (rack mode) and `root/demo` for the rest.
pub(crate) fn prepare(root: &Path, rack: Option<&RackConfig>) -> Result<Option<Rack>, DemoError> {
    let files = root.join(FILES);
    let had_rack = root.join("rack.json").exists();
    if had_rack && rack.is_some() && !files.exists() {
        return Err(DemoError::folder(
            root,
            "already holds a rack that the demo did not make (from --dir or $HSM_SIM_DIR); \
             give the demo another --dir",
        ));
    }
    if files.exists() {
        // A previous demo's files: its journal would bring back its jobs.
        std::fs::remove_dir_all(&files).map_err(|e| DemoError::folder(&files, e))?;
    }
    std::fs::create_dir_all(&files).map_err(|e| DemoError::folder(&files, e))?;
    match rack {
        None => Ok(None),
        Some(config) => Ok(Some(Rack::init(root, config.clone(), had_rack)?)),
    }
}

pub(crate) fn init_logging(path: &Path) -> Result<(), DemoError> {
    let file = std::fs::File::create(path).map_err(|e| DemoError::folder(path, e))?;
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // rumqttd logs every connection at info: keep the broker quiet.
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{base},rumqttd=off"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    // Another subscriber may be installed already (the caller's): then logs go there.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// A failed run keeps its temporary folder, for the agent's log.
pub(crate) fn keep_for_log(temp: Option<TempFolder>, log: &Path, quiet: bool) {
    if let Some(t) = temp {
        let _ = t.keep();
        if !quiet {
            eprintln!("ukey-demo: the agent's log is kept in {}", log.display());
        }
    } else if !quiet {
        eprintln!("ukey-demo: the agent's log is {}", log.display());
    }
}
