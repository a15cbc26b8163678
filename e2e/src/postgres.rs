//! A PostgreSQL server for SPIRE's sql datastore: what production SPIRE servers use, and
//! what two servers in HA share. Debian's package (`make tools` installs it when missing);
//! the data directory is on tmpfs (`/dev/shm`) when there is one, the server listens only
//! on a Unix socket in its own directory, and durability settings are off: tests measure
//! the operator and SPIRE, not the disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::Process;
use crate::wait;
use crate::workdir::WorkDir;

/// The database SPIRE's datastore uses.
pub const DATABASE: &str = "spire";

/// The database role SPIRE connects as (`initdb -U`).
const SUPERUSER: &str = "postgres";

/// A running `postgres`. Dropping it stops the server, then removes the data (kept, with
/// the log, when the test fails).
pub struct Postgres {
    process: Option<Process>,
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    /// `Some((uid, gid))` of the `postgres` account when we are root: postgres refuses
    /// to run as root.
    run_as: Option<(u32, u32)>,
    // Held for its Drop, after the process.
    _tmpfs_data: Option<tempfile::TempDir>,
    dir: WorkDir,
}

impl Postgres {
    /// Initializes a cluster, starts it and creates [`DATABASE`].
    pub async fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = WorkDir::new("pg")?;
        let run_as = if rustix::process::geteuid().is_root() {
            Some(account("postgres")?)
        } else {
            None
        };
        // Tmpfs when there is one: fsync on a busy disk would make test timings noise.
        let tmpfs_data = tempfile::Builder::new()
            .prefix("spire-rs-pgdata-")
            .tempdir_in("/dev/shm")
            .ok();
        let data = match &tmpfs_data {
            Some(d) => d.path().join("data"),
            None => dir.join("data"),
        };
        let socket_dir = dir.join("sock");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&socket_dir)?;
        if let Some((uid, gid)) = run_as {
            // The server's account must reach its directories through ours (0700).
            for path in [dir.path(), &socket_dir, &data] {
                chown(path, uid, gid)?;
            }
            if let Some(d) = &tmpfs_data {
                chown(d.path(), uid, gid)?;
            }
        }
        let mut pg = Self {
            process: None,
            bin,
            data,
            socket_dir,
            run_as,
            _tmpfs_data: tmpfs_data,
            dir,
        };
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&pg.data).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        pg.start_server().await?;
        let mut createdb = pg.command("createdb");
        createdb
            .arg("-h")
            .arg(&pg.socket_dir)
            .args(["-U", SUPERUSER, DATABASE]);
        run(createdb, "createdb")?;
        Ok(pg)
    }

    /// The libpq connection string for SPIRE's sql datastore (`connection_string` with
    /// `database_type = "postgres"`): the Unix socket directory as `host`.
    pub fn connection_string(&self) -> String {
        format!(
            "dbname={DATABASE} user={SUPERUSER} host={} sslmode=disable",
            self.socket_dir.display()
        )
    }

    /// Kills the server and its backends at once (SIGKILL to the process group), as a
    /// crashed or OOM-killed database would go.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops the server cleanly (SIGTERM: "smart" shutdown, then SIGKILL after a grace).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts the server again on the same data, after [`Postgres::kill`] or
    /// [`Postgres::stop`]; returns once it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.start_server().await
    }

    /// The working directory (socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn start_server(&mut self) -> anyhow::Result<()> {
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.socket_dir)
            // Unix socket only: no port to clash with other tests.
            .args(["-c", "listen_addresses="])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            // Segments in the data directory, not /dev/shm: a killed server leaves none
            // behind there.
            .args(["-c", "dynamic_shared_memory_type=mmap"]);
        let log = self.dir.join("postgres.log");
        let mut process = Process::spawn("postgres", postgres, &log)?;
        let bin = self.bin.clone();
        let socket_dir = self.socket_dir.clone();
        wait::until(
            "postgres accepting connections",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let running = process.ensure_running();
                let ready = Command::new(bin.join("pg_isready"))
                    .arg("-q")
                    .arg("-h")
                    .arg(&socket_dir)
                    .status()
                    .is_ok_and(|s| s.success());
                async move {
                    running?;
                    Ok(ready.then_some(()))
                }
            },
        )
        .await?;
        self.process = Some(process);
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
            // HOME of root would be unreadable for psql's history and rc files.
            command.env("HOME", self.dir.path());
        }
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Debian's server binaries, newest major version first; `SPIRE_RS_POSTGRES_BIN`
/// overrides them.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SPIRE_RS_POSTGRES_BIN") {
        return Ok(dir.into());
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    match dirs.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: run `make tools` (it installs \
             Debian's postgresql-15) or set SPIRE_RS_POSTGRES_BIN"
        ),
    }
}

/// The uid and gid of a local account, from /etc/passwd.
fn account(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .with_context(|| {
            format!("no account {name:?} in /etc/passwd to run PostgreSQL as (we are root)")
        })
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {} to {uid}:{gid}", path.display()))
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
