//! Logs: `tracing` everywhere, written to stderr by one subscriber set up here. `ARMFLEET_LOG`
//! filters them (`ARMFLEET_LOG=debug`, `ARMFLEET_LOG=phonectl=trace`); the default shows
//! warnings and errors. Logs are for diagnosis; what a tool tells its user goes through its
//! progress drawing and its results.

/// The variable that sets the log filter.
pub const LOG_ENV: &str = "ARMFLEET_LOG";

/// Installs the stderr subscriber for a command-line tool (once; later calls do nothing).
pub fn init() {
    init_with_default("warn");
}

/// Installs the subscriber with `default` as the filter when `ARMFLEET_LOG` is unset
/// (node-runtime logs at `info`: its lines are the worker's journal).
pub fn init_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
