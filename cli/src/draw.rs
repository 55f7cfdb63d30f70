//! Drawing progress events (the libraries emit [`Event`]s; this is the only place they become
//! output). Three ways, chosen once per run:
//!
//! - [`Mode::Terminal`]: an indicatif bar per line of work (bytes, rate, eta), finished steps
//!   printed above the bars;
//! - [`Mode::Lines`]: stderr is not a terminal (a log, CI): one line when a step starts and one
//!   when it ends, with its elapsed time — a five-minute rootfs build is visible in a log;
//! - [`Mode::Quiet`]: nothing (`--quiet`, `--json`).
//!
//! Several lines of work may run at once (one per phone): each gets a [`Sink`] with a prefix.

use bootstrap::progress::{Event, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars on a terminal.
    Terminal,
    /// One line per step start and end, with elapsed times.
    Lines,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// Bars when stderr is a terminal, lines otherwise; nothing when `quiet`.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Lines
        }
    }
}

/// Draws the events of one or more [`Sink`]s.
pub struct Drawer {
    mode: Mode,
    multi: MultiProgress,
    started: Instant,
}

impl Drawer {
    /// A drawer in `mode`.
    pub fn new(mode: Mode) -> Drawer {
        let target = if mode == Mode::Terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Drawer {
            mode,
            multi: MultiProgress::with_draw_target(target),
            started: Instant::now(),
        }
    }

    /// The mode it draws in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A sink for one line of work; `prefix` (a phone's serial) starts each of its lines.
    pub fn sink(&self, prefix: Option<&str>) -> Sink<'_> {
        let bar = (self.mode == Mode::Terminal).then(|| {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(spinner_style());
            if let Some(p) = prefix {
                bar.set_prefix(p.to_owned());
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Sink {
            drawer: self,
            prefix: prefix.map(str::to_owned),
            bar,
            steps: Mutex::new(HashMap::new()),
        }
    }

    /// Prints a line to stderr without tearing the bars (nothing in quiet mode).
    pub fn println(&self, line: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Terminal => {
                let _ = self.multi.println(line);
            }
            Mode::Lines => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    /// Seconds since the drawer was made (the whole run).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:.bold} {spinner} {msg}").expect("valid template")
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// The progress sink of one line of work.
pub struct Sink<'a> {
    drawer: &'a Drawer,
    prefix: Option<String>,
    bar: Option<ProgressBar>,
    /// When each running step started (for the elapsed time on its last line).
    steps: Mutex<HashMap<String, Instant>>,
}

impl Sink<'_> {
    fn line(&self, text: String) {
        let text = match &self.prefix {
            Some(p) => format!("{p}: {text}"),
            None => text,
        };
        self.drawer.println(&text);
    }

    /// Ends the line of work: the bar shows `done` or `failed` and stays.
    pub fn finish(&self, ok: bool) {
        if let Some(bar) = &self.bar {
            if ok {
                bar.finish_with_message("done");
            } else {
                bar.abandon_with_message("failed");
            }
        }
    }
}

impl Progress for Sink<'_> {
    fn event(&self, event: Event) {
        match event {
            Event::StepStarted { step, total } => {
                self.steps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(step.clone(), Instant::now());
                if let Some(bar) = &self.bar {
                    match total {
                        Some(t) => {
                            bar.set_style(bytes_style());
                            bar.set_length(t);
                            bar.set_position(0);
                        }
                        None => bar.set_style(spinner_style()),
                    }
                    bar.set_message(step);
                } else if self.drawer.mode == Mode::Lines {
                    self.line(format!("{step} ..."));
                }
            }
            Event::Bytes { done, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                }
            }
            Event::StepFinished { step, detail } => {
                let took = self
                    .steps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&step)
                    .map(|t| t.elapsed());
                let took = took
                    .map(|d| format!(" ({:.1} s)", d.as_secs_f64()))
                    .unwrap_or_default();
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" {detail}")
                };
                match self.drawer.mode {
                    Mode::Terminal => self.line(format!("✓ {step}:{detail}{took}")),
                    Mode::Lines => self.line(format!("{step}: done{detail}{took}")),
                    Mode::Quiet => {}
                }
            }
            Event::StepSkipped { step, reason } => match self.drawer.mode {
                Mode::Terminal => self.line(format!("· {step}: {reason}")),
                Mode::Lines => self.line(format!("{step}: {reason}")),
                Mode::Quiet => {}
            },
            Event::Note(n) => self.line(format!("note: {n}")),
        }
    }
}
