//! A private PostgreSQL cluster for one test (its own data directory, port and socket
//! directory), so a test may stop, crash and restart the database without touching anyone
//! else's. Uses the machine's `initdb` and `pg_ctl`; when run as root they run as the
//! `postgres` user, as PostgreSQL refuses to run as root.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when we are root.
fn pg(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl PgCluster {
    /// `initdb` into a temporary directory, then start it on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown of {} failed", dir.path().display());
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cluster = Self { dir, port };
        pg(
            "initdb",
            &[
                "-D",
                &cluster.data().to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        cluster.up()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin URL, for [`crate::TestEnv::start_on`].
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.socket_dir().display()
        );
        let data = self.data();
        let log = self.dir.path().join("log");
        pg(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
    }

    /// Stops the server the way a crash does (`immediate`: no checkpoint, clients cut off).
    pub fn crash(&self) -> anyhow::Result<()> {
        pg(
            "pg_ctl",
            &["-D", &self.data().to_string_lossy(), "-m", "immediate", "-w", "stop"],
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = pg(
            "pg_ctl",
            &["-D", &self.data().to_string_lossy(), "-m", "immediate", "-w", "stop"],
        );
    }
}
