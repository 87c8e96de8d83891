//! The state folder's files are the agent's alone: folders `0700`, files `0600`.
//!
//! The journal holds jobs (encrypted, but with their order data's shape), the outbox holds
//! step events, and the status and presence files say what the desk does: nothing another
//! local user should read. systemd's `UMask=0077` already gives these modes, but an agent
//! started by hand under the usual umask `022` would make them `0644`, so every file and
//! folder here is created with its mode set explicitly (and then set again, exactly, since a
//! umask can only take bits away). At start-up [`secure_state_dir`] also tightens what an
//! older agent or an operator left looser, and logs what it changed.
//!
//! This module does not decide where files go or what they hold; the stores do.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every folder the agent creates in its state folder (and of the folder itself).
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the agent creates in its state folder.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with mode `0700`; a folder that exists already
/// keeps its mode (see [`secure_state_dir`]).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    // The umask may have taken bits away from 0700 (never added any): make it exact.
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// `OpenOptions` that create a file with mode `0600` (read and write access are up to the
/// caller). Call [`fix_created`] on the new file: the umask may have taken bits away.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Sets a file just created by [`options`] to exactly `0600`.
pub fn fix_created(file: &File) -> std::io::Result<()> {
    file.set_permissions(Permissions::from_mode(FILE_MODE))
}

/// Writes `bytes` to a new or truncated file `path` with mode `0600` (for the temporary
/// files that are then renamed over the real ones).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    fix_created(&file)?;
    file.write_all(bytes)
}

/// Makes sure the state folder `dir` exists with mode `0700` and that nothing in it (its
/// sub-folders included; symbolic links are left alone) is open to group or others: such
/// folders become `0700` and files `0600`. Returns what was tightened, for one log line.
pub fn secure_state_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    create_dir(dir)?;
    let mut tightened = Vec::new();
    tighten(dir, &mut tightened)?;
    Ok(tightened)
}

fn tighten(path: &Path, tightened: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return Ok(());
    };
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(wanted))?;
        tightened.push(path.to_owned());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path(), tightened)?;
        }
    }
    Ok(())
}

/// Why a private key file's mode is unsafe, or `None` when only its owner may read it.
///
/// A private key readable by group or others (the device group `ukey`, say) lets every
/// member open what is sealed to the station and the journal: the agent refuses it.
pub fn key_mode_problem(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} has mode {mode:04o}: a private key must be readable by the agent's user only \
             (chmod 600 {0})",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_files_and_folders_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // A permissive mode on the parent must not leak into what is created inside.
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o777)).unwrap();
        let state = dir.path().join("a/b");
        create_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        let file = state.join("f");
        write(&file, b"x").unwrap();
        assert_eq!(mode(&file), 0o600);
        // Rewriting a file keeps it private.
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write(&file, b"y").unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn secure_state_dir_tightens_what_is_open_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("outbox")).unwrap();
        std::fs::set_permissions(&state, Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(state.join("outbox"), Permissions::from_mode(0o750)).unwrap();
        std::fs::write(state.join("journal.log"), b"j").unwrap();
        std::fs::set_permissions(state.join("journal.log"), Permissions::from_mode(0o644)).unwrap();
        std::fs::write(state.join("outbox/outbox.log"), b"o").unwrap();
        std::fs::set_permissions(
            state.join("outbox/outbox.log"),
            Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut tightened = secure_state_dir(&state).unwrap();
        tightened.sort();
        assert_eq!(
            tightened,
            vec![
                state.clone(),
                state.join("journal.log"),
                state.join("outbox"),
            ]
        );
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("outbox")), 0o700);
        assert_eq!(mode(&state.join("journal.log")), 0o600);
        assert_eq!(mode(&state.join("outbox/outbox.log")), 0o600);
        assert!(secure_state_dir(&state).unwrap().is_empty());
    }

    #[test]
    fn a_key_open_to_group_or_others_is_named_with_its_mode_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("station-key.pem");
        std::fs::write(&key, b"k").unwrap();
        for open in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&key, Permissions::from_mode(open)).unwrap();
            let problem = key_mode_problem(&key).unwrap();
            assert!(problem.contains(&format!("mode 0{open:o}")), "{problem}");
            assert!(problem.contains("chmod 600"), "{problem}");
            assert!(problem.contains(&key.display().to_string()), "{problem}");
        }
        for private in [0o600, 0o400] {
            std::fs::set_permissions(&key, Permissions::from_mode(private)).unwrap();
            assert_eq!(key_mode_problem(&key), None);
        }
        assert_eq!(key_mode_problem(&dir.path().join("absent")), None);
    }
}
