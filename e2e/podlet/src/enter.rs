//! `stickyfarm-podlet enter`: the last step before a container's program, run by
//! `ip netns exec` inside the pod's network namespace and a fresh mount namespace. It binds the
//! pod's volumes at their mount paths (visible to this container only), drops to the
//! container's user and replaces itself with the program, so the pid the podlet holds is the
//! program's.

use std::ffi::CString;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::unistd::{Gid, Uid, chdir, execvp, setgid, setgroups, setuid};

/// One bind mount: `source:target[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Folder or file on this machine.
    pub source: String,
    /// Where the container sees it.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

impl Bind {
    /// The command-line form.
    pub fn to_arg(&self) -> String {
        format!(
            "{}:{}{}",
            self.source,
            self.target,
            if self.read_only { ":ro" } else { "" }
        )
    }
}

impl std::str::FromStr for Bind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
            return Err(format!("a mount is source:target[:ro], not {s:?}"));
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some(other) => return Err(format!("unknown mount option {other:?} in {s:?}")),
        };
        Ok(Bind {
            source: source.into(),
            target: target.into(),
            read_only,
        })
    }
}

/// What `enter` does.
#[derive(Debug, clap::Args)]
pub struct EnterArgs {
    /// Bind mounts, `source:target[:ro]`.
    #[arg(long = "mount")]
    pub mounts: Vec<Bind>,
    /// User id to run as.
    #[arg(long)]
    pub uid: u32,
    /// Group id to run as.
    #[arg(long)]
    pub gid: u32,
    /// Supplementary groups.
    #[arg(long = "group")]
    pub groups: Vec<u32>,
    /// Working folder.
    #[arg(long, default_value = "/")]
    pub workdir: String,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// Mounts, drops privileges and execs; returns only on failure.
pub fn enter(args: EnterArgs) -> anyhow::Result<std::convert::Infallible> {
    use anyhow::Context as _;
    // Mounts made here stay in this mount namespace (ip netns exec made it a slave of the
    // host's, so nothing propagates back).
    for b in &args.mounts {
        let source_is_file = Path::new(&b.source).is_file();
        if source_is_file {
            if let Some(parent) = Path::new(&b.target).parent() {
                std::fs::create_dir_all(parent).ok();
            }
            if !Path::new(&b.target).exists() {
                std::fs::write(&b.target, b"")
                    .with_context(|| format!("creating mount point {}", b.target))?;
            }
        } else {
            std::fs::create_dir_all(&b.target)
                .with_context(|| format!("creating mount point {}", b.target))?;
        }
        mount(
            Some(b.source.as_str()),
            b.target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("binding {} at {}", b.source, b.target))?;
        if b.read_only {
            mount(
                None::<&str>,
                b.target.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .with_context(|| format!("making {} read-only", b.target))?;
        }
    }
    let groups: Vec<Gid> = args.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).context("setting supplementary groups")?;
    setgid(Gid::from_raw(args.gid)).context("setting the group id")?;
    setuid(Uid::from_raw(args.uid)).context("setting the user id")?;
    chdir(args.workdir.as_str()).with_context(|| format!("changing to {}", args.workdir))?;
    let argv: Vec<CString> = args
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument holds a NUL byte")?;
    // execvp searches the container's PATH (the environment the podlet gave this process).
    let err = execvp(&argv[0], &argv).unwrap_err();
    anyhow::bail!("starting {:?}: {err}", args.argv[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_and_print_alike() {
        let b: Bind = "/a/b:/var/run/x:ro".parse().unwrap();
        assert_eq!(
            b,
            Bind {
                source: "/a/b".into(),
                target: "/var/run/x".into(),
                read_only: true
            }
        );
        assert_eq!(b.to_arg(), "/a/b:/var/run/x:ro");
        assert!("/a".parse::<Bind>().is_err());
        assert!("/a:/b:rw2".parse::<Bind>().is_err());
    }
}
