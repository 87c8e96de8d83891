//! Live progress of the demo on stderr: one line per slot (indicatif) while tokens are made,
//! and a permanent line above them for each token finished, failed or caught by a fault.
//!
//! Three kinds: bars on a terminal; plain lines (the permanent ones only) when stderr is not a
//! terminal; nothing at all with `--json`. Failures are red and successes green on a terminal
//! unless `NO_COLOR` is set. This module only draws: what a line says is decided by the desk.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressKind {
    /// Live lines if stderr is a terminal, else plain lines.
    Auto,
    /// Nothing (`--json`).
    Off,
}

/// What a live line shows.
#[derive(Debug, Clone)]
pub(crate) struct SeatLine {
    /// `slot 0`, `job 3`.
    pub(crate) position: String,
    /// The token serial, when known.
    pub(crate) serial: Option<String>,
    /// The company, when known.
    pub(crate) company: Option<String>,
    /// The current step or state.
    pub(crate) status: Status,
    /// Time since the token was plugged in (or the job dispatched).
    pub(crate) elapsed: Duration,
}

/// The state part of a line.
#[derive(Debug, Clone)]
pub(crate) enum Status {
    /// Nothing is happening on this line (an empty slot).
    Idle(String),
    /// Working: the step or what it waits for.
    Working(String),
    /// Done.
    Done(String),
    /// Failed, with the reason.
    Failed(String),
}

enum Draw {
    Bars {
        multi: MultiProgress,
        bars: Vec<ProgressBar>,
    },
    Lines,
    Off,
}

/// The progress display.
pub(crate) struct Progress {
    draw: Draw,
    color: bool,
}

impl Progress {
    /// A display of `lines` live lines.
    pub(crate) fn new(kind: ProgressKind, lines: usize) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let color = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let draw = match kind {
            ProgressKind::Off => Draw::Off,
            ProgressKind::Auto if !terminal => Draw::Lines,
            ProgressKind::Auto => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
                let style = ProgressStyle::with_template("{spinner:.cyan} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bars = (0..lines)
                    .map(|_| {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(style.clone());
                        bar
                    })
                    .collect();
                Draw::Bars { multi, bars }
            }
        };
        Progress { draw, color }
    }

    /// Whether anything is shown.
    pub(crate) fn is_on(&self) -> bool {
        !matches!(self.draw, Draw::Off)
    }

    /// Redraws live line `index`.
    pub(crate) fn update(&self, index: usize, line: &SeatLine) {
        if let Draw::Bars { bars, .. } = &self.draw
            && let Some(bar) = bars.get(index)
        {
            bar.set_message(self.format(line));
            bar.tick();
        }
    }

    /// A permanent line (above the live lines on a terminal).
    pub(crate) fn note(&self, text: &str) {
        match &self.draw {
            Draw::Bars { multi, .. } => {
                // A failed write to the terminal only loses a progress line.
                let _ = multi.println(text);
            }
            Draw::Lines => eprintln!("{text}"),
            Draw::Off => {}
        }
    }

    /// Removes the live lines (the permanent ones stay).
    pub(crate) fn finish(&self) {
        if let Draw::Bars { multi, bars } = &self.draw {
            for bar in bars {
                bar.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }

    /// `text` in red (on a colour terminal).
    pub(crate) fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    /// `text` in green (on a colour terminal).
    pub(crate) fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    /// `text` in yellow (on a colour terminal).
    pub(crate) fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// The text of a live line.
    pub(crate) fn format(&self, line: &SeatLine) -> String {
        let status = match &line.status {
            Status::Idle(s) | Status::Working(s) => s.clone(),
            Status::Done(s) => self.green(s),
            Status::Failed(s) => self.red(s),
        };
        format!(
            "{}  {}  {}  {}  {:>6.1}s",
            pad(&line.position, 7),
            pad(line.serial.as_deref().unwrap_or("-"), 16),
            pad(line.company.as_deref().unwrap_or("-"), 26),
            pad_status(&status, &line.status),
            line.elapsed.as_secs_f64()
        )
    }
}

fn pad_status(painted: &str, status: &Status) -> String {
    let plain = match status {
        Status::Idle(s) | Status::Working(s) | Status::Done(s) | Status::Failed(s) => s,
    };
    let fill = 24usize.saturating_sub(display_width(plain));
    format!("{painted}{}", " ".repeat(fill))
}

/// `text` padded with spaces to `width` terminal columns.
pub(crate) fn pad(text: &str, width: usize) -> String {
    let fill = width.saturating_sub(display_width(text));
    format!("{text}{}", " ".repeat(fill))
}

/// Terminal columns of `text`: East Asian wide characters (the company names) take two.
pub(crate) fn display_width(text: &str) -> usize {
    text.chars()
        .map(|c| {
            let c = u32::from(c);
            let wide = matches!(c,
                0x1100..=0x115F
                | 0x2E80..=0x303E
                | 0x3041..=0x33FF
                | 0x3400..=0x4DBF
                | 0x4E00..=0x9FFF
                | 0xA000..=0xA4CF
                | 0xAC00..=0xD7A3
                | 0xF900..=0xFAFF
                | 0xFE30..=0xFE4F
                | 0xFF00..=0xFF60
                | 0xFFE0..=0xFFE6
                | 0x20000..=0x3FFFD);
            if wide { 2 } else { 1 }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_names_take_two_columns_each() {
        assert_eq!(display_width("杭州明远科技有限公司"), 20);
        assert_eq!(display_width("slot 0"), 6);
        assert_eq!(display_width(&pad("北京", 7)), 7);
        assert_eq!(pad("abcdefgh", 4), "abcdefgh");
    }
}
