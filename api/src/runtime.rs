//! The async runtime every Stickyfarm server runs on (feature `server`).
//!
//! With one worker, tokio's single-threaded scheduler instead of its work-stealing one. A unit
//! or a gateway given one CPU (a pod's CPU limit of 1, `TOKIO_WORKER_THREADS=1`) then polls
//! its tasks on the thread that waits for its sockets, without the scheduler's cross-thread
//! bookkeeping. Measured with one worker on one CPU (`bench/results/2026-12-06-one-worker.md`):
//! the gateway at full load served 38–60 % more requests/s with 29–40 % less CPU per request
//! than on the work-stealing scheduler, and the sidecar's cached reads took 16–23 % less CPU.

/// Which scheduler a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// One thread polls every task and the I/O driver.
    CurrentThread,
    /// Work-stealing across `TOKIO_WORKER_THREADS` workers (tokio's default: one per CPU).
    MultiThread,
}

/// The flavor for `workers` (the `TOKIO_WORKER_THREADS` setting, tokio's own name for it) on a
/// machine where `cpus` are available to the process (cgroup limits included).
pub fn flavor(workers: Option<&str>, cpus: usize) -> Flavor {
    let workers = match workers.map(str::trim) {
        // tokio's multi-threaded builder reads the same variable and panics on a bad value;
        // leave that verdict (and its message) to it.
        Some(w) => w.parse::<usize>().ok(),
        None => Some(cpus),
    };
    match workers {
        Some(1) => Flavor::CurrentThread,
        _ => Flavor::MultiThread,
    }
}

/// Builds the runtime for this process's environment (see [`flavor`]).
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = std::env::var("TOKIO_WORKER_THREADS").ok();
    let mut builder = match flavor(workers.as_deref(), cpus) {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_runs_on_the_single_threaded_scheduler() {
        assert_eq!(flavor(Some("1"), 8), Flavor::CurrentThread);
        assert_eq!(flavor(Some(" 1 "), 8), Flavor::CurrentThread);
        assert_eq!(flavor(Some("2"), 1), Flavor::MultiThread);
    }

    #[test]
    fn without_a_setting_the_available_cpus_decide() {
        assert_eq!(flavor(None, 1), Flavor::CurrentThread);
        assert_eq!(flavor(None, 2), Flavor::MultiThread);
    }

    #[test]
    fn a_bad_setting_is_left_to_tokio_to_refuse() {
        assert_eq!(flavor(Some("many"), 1), Flavor::MultiThread);
        assert_eq!(flavor(Some("0"), 1), Flavor::MultiThread);
    }
}
