//! Progress events. Libraries report what they are doing through a [`Progress`] sink; the
//! binaries decide how to draw it (indicatif bars on a terminal, plain lines otherwise, nothing in
//! tests). A library never prints.

/// One thing that happened during a long operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A named step started; `total` is its size in bytes when known.
    StepStarted {
        /// Short stable name, e.g. `push node-runtime`.
        step: String,
        /// Total bytes the step will move, when known.
        total: Option<u64>,
    },
    /// Bytes moved within the current step (cumulative: `done` counts from the step's start).
    Bytes {
        /// The step these bytes belong to.
        step: String,
        /// Bytes done so far.
        done: u64,
    },
    /// A step finished successfully; `detail` is a short human summary (may be empty).
    StepFinished {
        /// The step that finished.
        step: String,
        /// Short human summary, e.g. `12.3 MiB in 1.2 s`.
        detail: String,
    },
    /// A step was skipped because its result was already in place.
    StepSkipped {
        /// The step that was skipped.
        step: String,
        /// Why, e.g. `unchanged (sha256 matches)`.
        reason: String,
    },
    /// A note worth showing the user that is not an error.
    Note(String),
}

/// A sink for [`Event`]s. Implementations must be cheap: byte events can arrive often.
pub trait Progress: Send + Sync {
    /// Receive one event.
    fn event(&self, event: Event);
}

/// Shorthands for emitting events, for every sink.
pub trait ProgressExt: Progress {
    /// [`Event::StepStarted`].
    fn step(&self, step: &str, total: Option<u64>) {
        self.event(Event::StepStarted {
            step: step.to_owned(),
            total,
        });
    }
    /// [`Event::StepFinished`].
    fn done(&self, step: &str, detail: String) {
        self.event(Event::StepFinished {
            step: step.to_owned(),
            detail,
        });
    }
    /// [`Event::StepSkipped`].
    fn skip(&self, step: &str, reason: &str) {
        self.event(Event::StepSkipped {
            step: step.to_owned(),
            reason: reason.to_owned(),
        });
    }
    /// [`Event::Bytes`].
    fn bytes(&self, step: &str, done: u64) {
        self.event(Event::Bytes {
            step: step.to_owned(),
            done,
        });
    }
    /// [`Event::Note`].
    fn note(&self, text: String) {
        self.event(Event::Note(text));
    }
}

impl<P: Progress + ?Sized> ProgressExt for P {}

/// A sink that drops everything; the default for library callers that do not care.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: Event) {}
}

impl<F: Fn(Event) + Send + Sync> Progress for F {
    fn event(&self, event: Event) {
        self(event)
    }
}

/// A byte count for people: `512 B`, `12.3 MiB`. The one formatter every tool uses.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
