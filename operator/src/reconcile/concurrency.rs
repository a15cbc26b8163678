//! How many entry write batches the writer keeps in flight.
//!
//! SPIRE writes every entry in its own datastore transaction, and what concurrency
//! helps depends on the datastore, which the operator cannot see: with sqlite (SPIRE's
//! default) transactions wait on one lock and more than one batch in flight is slower
//! (15000 entries: 10.8 and 13.0 s one at a time, 14.1 and 13.7 s two at a time), while
//! PostgreSQL takes four batches about twice as fast as one (35.9 s against 17.3 to
//! 21.4 s). So by default the writer measures: it sends a few batches one at a time,
//! then twice as many two at a time, and so on, keeping the higher concurrency only
//! while it raises the entries written per second by a quarter or more.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

/// `--spire-write-concurrency`: `auto` or a fixed number of batches in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteConcurrency {
    /// Found per plan by measuring (see the module documentation).
    #[default]
    Auto,
    /// Always this many (1 to [`MAX_FIXED`]).
    Fixed(u16),
}

/// The highest fixed concurrency accepted.
pub const MAX_FIXED: u16 = 64;

/// The concurrencies `auto` tries, in order.
const LEVELS: [usize; 4] = [1, 2, 4, 8];
/// Batches per batch in flight in one measuring window: at 2 in flight, 6 batches.
const WINDOW_PER_SLOT: usize = 3;
/// How much faster a higher concurrency must write to be kept.
const GAIN: f64 = 1.25;

impl FromStr for WriteConcurrency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        match s.parse::<u16>() {
            Ok(n) if (1..=MAX_FIXED).contains(&n) => Ok(Self::Fixed(n)),
            _ => Err(format!(
                "{s:?} is neither `auto` nor a number of batches from 1 to {MAX_FIXED}"
            )),
        }
    }
}

impl fmt::Display for WriteConcurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The concurrency for one run of write calls: fixed, or probing up [`LEVELS`].
#[derive(Debug)]
pub struct Limiter {
    fixed: Option<usize>,
    level: usize,
    settled: bool,
    best_rate: f64,
    window: Window,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    batches: usize,
    entries: usize,
}

impl Window {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            batches: 0,
            entries: 0,
        }
    }
}

impl Limiter {
    /// A limiter for one run of calls.
    pub fn new(concurrency: WriteConcurrency) -> Self {
        Self {
            fixed: match concurrency {
                WriteConcurrency::Auto => None,
                WriteConcurrency::Fixed(n) => Some(usize::from(n.max(1))),
            },
            level: 0,
            settled: false,
            best_rate: 0.0,
            window: Window::new(),
        }
    }

    /// Batches to keep in flight now.
    pub fn current(&self) -> usize {
        self.fixed.unwrap_or(LEVELS[self.level])
    }

    /// Whether probing is over (always, for a fixed concurrency).
    pub fn settled(&self) -> bool {
        self.fixed.is_some() || self.settled
    }

    /// Records a finished batch of `entries`.
    pub fn completed(&mut self, entries: usize) {
        if self.settled() {
            return;
        }
        self.window.batches += 1;
        self.window.entries += entries;
        if self.window.batches < LEVELS[self.level] * WINDOW_PER_SLOT {
            return;
        }
        let seconds = self.window.started.elapsed().as_secs_f64().max(1e-6);
        self.observe(self.window.entries as f64 / seconds);
    }

    /// Takes the entries-per-second rate of the window just finished at the current level.
    fn observe(&mut self, rate: f64) {
        self.window = Window::new();
        if self.level == 0 || rate >= self.best_rate * GAIN {
            self.best_rate = rate;
            if self.level + 1 < LEVELS.len() {
                self.level += 1;
            } else {
                self.settled = true;
            }
        } else {
            // No better than the level below: go back to it and stay.
            self.level -= 1;
            self.settled = true;
        }
        if self.settled {
            tracing::info!(
                in_flight = self.current(),
                entries_per_second = self.best_rate.round(),
                "entry write concurrency chosen"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_and_numbers_in_range() {
        assert_eq!("auto".parse(), Ok(WriteConcurrency::Auto));
        assert_eq!("4".parse(), Ok(WriteConcurrency::Fixed(4)));
        for bad in ["0", "65", "-1", "four", ""] {
            let err = bad.parse::<WriteConcurrency>().unwrap_err();
            assert!(err.contains("auto") && err.contains("64"), "{bad}: {err}");
        }
        assert_eq!(WriteConcurrency::Fixed(4).to_string(), "4");
        assert_eq!(WriteConcurrency::Auto.to_string(), "auto");
    }

    /// Feeds the limiter a datastore whose rate at each level is given.
    fn settle(rates: [f64; 4]) -> usize {
        let mut limiter = Limiter::new(WriteConcurrency::Auto);
        while !limiter.settled() {
            let level = LEVELS.iter().position(|l| *l == limiter.current()).unwrap();
            limiter.observe(rates[level]);
        }
        limiter.current()
    }

    #[test]
    fn auto_keeps_a_higher_concurrency_only_while_it_pays() {
        // sqlite: transactions wait on one lock; two at a time is a little slower.
        assert_eq!(settle([1100.0, 1000.0, 900.0, 800.0]), 1);
        // Equal rates: one at a time.
        assert_eq!(settle([500.0, 510.0, 520.0, 530.0]), 1);
        // PostgreSQL (measured: 1 -> 418/s, 4 -> 780/s, 8 -> 890/s).
        assert_eq!(settle([418.0, 600.0, 780.0, 890.0]), 4);
        // A server that scales all the way.
        assert_eq!(settle([100.0, 200.0, 400.0, 800.0]), 8);
    }

    #[test]
    fn windows_grow_with_the_level_and_fixed_never_changes() {
        let mut limiter = Limiter::new(WriteConcurrency::Auto);
        for _ in 0..WINDOW_PER_SLOT {
            assert_eq!(limiter.current(), 1);
            limiter.completed(100);
        }
        assert_eq!(limiter.current(), 2, "one window at 1, then 2");
        let mut fixed = Limiter::new(WriteConcurrency::Fixed(3));
        for _ in 0..100 {
            fixed.completed(100);
        }
        assert_eq!(fixed.current(), 3);
        assert!(fixed.settled());
    }
}
