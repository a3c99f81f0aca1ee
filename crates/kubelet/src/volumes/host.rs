//! `hostPath` volumes: the kubelet's `type` check.

use std::path::Path;

/// The kubelet's `hostPath.type` check; creates what the `...OrCreate` types ask for.
pub(super) fn host_path(path: &Path, type_: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let p = path.display();
    let meta = || std::fs::metadata(path);
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("hostPath type check failed: {p} is not {what}"))
        }
    };
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta().is_err() {
                std::fs::create_dir_all(path)
                    .map_err(|e| format!("cannot create directory {p}: {e}"))?;
                let _ = std::fs::set_permissions(
                    path,
                    <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
                );
            }
            check(meta().is_ok_and(|m| m.is_dir()), "a directory")
        }
        "Directory" => check(meta().is_ok_and(|m| m.is_dir()), "a directory"),
        "FileOrCreate" => {
            if meta().is_err() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| format!("cannot create file {p}: {e}"))?;
            }
            check(meta().is_ok_and(|m| m.is_file()), "a file")
        }
        "File" => check(meta().is_ok_and(|m| m.is_file()), "a file"),
        "Socket" | "CharDevice" | "BlockDevice" => {
            let what = match type_ {
                "Socket" => "a socket file",
                "CharDevice" => "a character device",
                _ => "a block device",
            };
            let ft = meta().map(|m| m.file_type());
            let ok = ft.is_ok_and(|t| match type_ {
                "Socket" => t.is_socket(),
                "CharDevice" => t.is_char_device(),
                _ => t.is_block_device(),
            });
            check(ok, what)?;
            Err(format!(
                "hostPath {p} is {what}: a wasm pod can only be given directories and regular files"
            ))
        }
        other => Err(format!("invalid HostPathType {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_types_are_checked_and_created_as_the_kubelet_does() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("made");
        assert!(host_path(&dir, "Directory").is_err());
        host_path(&dir, "DirectoryOrCreate").map_err(std::io::Error::other)?;
        assert!(dir.is_dir());
        let file = dir.join("f");
        assert_eq!(
            host_path(&file, "File"),
            Err(format!(
                "hostPath type check failed: {} is not a file",
                file.display()
            ))
        );
        host_path(&file, "FileOrCreate").map_err(std::io::Error::other)?;
        assert!(file.is_file());
        assert!(host_path(&file, "Directory").is_err());
        assert!(host_path(&dir, "File").is_err());
        assert!(
            host_path(Path::new("/dev/null"), "CharDevice")
                .is_err_and(|e| e.contains("only be given"))
        );
        assert!(host_path(&file, "Socket").is_err_and(|e| e.contains("is not a socket")));
        assert!(host_path(&file, "Sideways").is_err());
        host_path(&file, "").map_err(std::io::Error::other)?;
        Ok(())
    }
}
