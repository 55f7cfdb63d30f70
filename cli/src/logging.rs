//! Logs: `tracing` everywhere, written to stderr by one subscriber set up here. `ARMFLEET_LOG`
//! sets the level (`error`, `warn`, `info`, `debug`, `trace`); without it a tool shows warnings
//! and errors. Logs are for diagnosis; what a tool tells its user goes through its progress
//! drawing and its results. A plain level, not a filter language: the static node-runtime stays
//! small (a regex engine for per-target filters cost it 0.4 MB).

use tracing_subscriber::filter::LevelFilter;

/// The variable that sets the log level.
pub const LOG_ENV: &str = "ARMFLEET_LOG";

/// Installs the stderr subscriber for a command-line tool (once; later calls do nothing).
pub fn init() {
    init_with_default(LevelFilter::WARN);
}

/// Installs the subscriber with `default` as the level when `ARMFLEET_LOG` is unset or not a
/// level (node-runtime logs at `info`: its lines are the worker's journal).
pub fn init_with_default(default: LevelFilter) {
    let level = std::env::var(LOG_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(default);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
