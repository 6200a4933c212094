//! The processes a benchmark starts: pinned to CPUs, logged to files, measured from /proc,
//! and always stopped (on drop too, so a failed run leaves nothing behind).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Which CPUs a process may run on (`taskset -c`), or `None` to leave it to the scheduler.
pub type Cpus = Option<&'static str>;

/// Where a proxy runs and with how many workers (gateway `TOKIO_WORKER_THREADS`, HAProxy
/// `nbthread`). A bare [`Cpus`] is one worker there: the like-for-like comparison.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// CPUs it may use.
    pub cpus: Cpus,
    /// Worker threads.
    pub workers: usize,
}

impl From<Cpus> for Run {
    fn from(cpus: Cpus) -> Run {
        Run { cpus, workers: 1 }
    }
}

/// A started process.
pub struct Proc {
    /// What it is, for messages.
    pub label: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` (pinned to `cpus` when given), output to `<logs>/<label>.log`.
    pub fn start(
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        cpus: Cpus,
        logs: &Path,
    ) -> anyhow::Result<Proc> {
        let log = logs.join(format!("{label}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {label} ({})", program.display()))?;
        Ok(Proc {
            label: label.to_owned(),
            child,
            log,
        })
    }

    /// The process id (taskset execs the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log {}:\n{}",
                self.label,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits for the process to exit on its own; fails with the log's tail when it does not
    /// within `limit` or exits unsuccessfully.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!(
                    "{} failed ({status}); its log {}:\n{}",
                    self.label,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not finish within {limit:?}", self.label)
    }

    /// Waits until `addr` accepts connections (or the process dies, or 30 s pass).
    pub fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.check_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not listen on {addr} within 30 s; its log:\n{}",
            self.label,
            tail(&self.log)
        )
    }

    /// CPU time (user + system) of the process and its children, from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        tree_cpu_seconds(self.pid())
    }

    /// Resident memory of the process in bytes, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// Its threads' context switches so far ([`context_switches`]).
    pub fn context_switches(&self) -> u64 {
        context_switches(self.pid())
    }

    /// Kills it at once (a crashed pod).
    pub fn kill_now(&mut self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Asks it to stop, then kills it after 5 s.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_now();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// utime + stime of one process in seconds (0 when it is gone).
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name is in parentheses and may contain spaces: count fields after it.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5) are the 12th and 13th after the command name.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|v| v.parse::<u32>().ok()));
        }
    }
    out
}

/// CPU seconds of a process and all its descendants (nginx's workers are children of its
/// master).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    process_cpu_seconds(pid) + children(pid).into_iter().map(tree_cpu_seconds).sum::<f64>()
}

/// Context switches (voluntary and not) of every thread of a process so far: a thread gives up
/// its CPU when it waits for the next event, and more processes sharing a CPU, each woken for
/// fewer requests, show as more switches per request.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// VmRSS of a process in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A free TCP port on loopback, outside the kernel's ephemeral range: a port from
/// `bind(…:0)` could be taken by one of the units' outgoing connections before the child that
/// was handed it binds it (a bench run once lost a sidecar that way).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(farmctl::ports::free_port([127, 0, 0, 1].into())?)
}

/// A loopback address with a free port.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// CPU placement on this machine: the system under test on one side, the load generator (and
/// the backends, which every configuration shares) on the other.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The proxy (or sidecar) being measured.
    pub proxy: Cpus,
    /// The load generator and the backends.
    pub load: Cpus,
}

impl Placement {
    /// Two or more CPUs: proxy on CPU 1, everything else on CPU 0. One CPU: no pinning.
    pub fn for_this_machine() -> Placement {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            Placement {
                proxy: Some("1"),
                load: Some("0"),
            }
        } else {
            Placement {
                proxy: None,
                load: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_time_and_memory() {
        let me = std::process::id();
        // Burn a little CPU so the counter moves past one tick.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(tree_cpu_seconds(me) > 0.0);
        assert!(rss_bytes(me) > 1024 * 1024);
        assert_eq!(tree_cpu_seconds(u32::MAX), 0.0);
    }

    #[test]
    fn counts_the_context_switches_of_every_thread() {
        let me = std::process::id();
        let before = context_switches(me);
        // A thread that sleeps gives up its CPU each time: voluntary switches, counted under
        // its own task (read while it lives: an ended thread's task is gone from /proc).
        let (slept, read) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let sleeper = std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(1));
            }
            slept.0.send(()).unwrap();
            let _ = read.1.recv();
        });
        slept.1.recv().unwrap();
        let after = context_switches(me);
        read.0.send(()).unwrap();
        sleeper.join().unwrap();
        assert!(after >= before + 20, "{before} → {after}");
        assert_eq!(context_switches(u32::MAX), 0);
    }
}
