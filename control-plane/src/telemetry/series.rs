//! From cumulative points to deltas, pure. A series remembers its last point (start time, time, values); the
//! next point of the same start time gives the difference, a later start time (the daemon restarted) gives
//! its whole value, and anything older or repeated gives nothing. Because each point carries the totals, a lost
//! export loses nothing: the next one's delta covers both.

use serde::{Deserialize, Serialize};

/// The last point seen of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Last {
    #[serde(rename = "s")]
    pub start_ns: u64,
    #[serde(rename = "t")]
    pub time_ns: u64,
    #[serde(rename = "v")]
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// New data: the difference from the last point (or the whole value after a restart), to add to rollups.
    Delta(Vec<f64>),
    /// Seen already, or older than what was seen (a retried or reordered export): nothing to add.
    Stale,
    /// Lower than the last value without a new start time: refused, and the series keeps its last point.
    Backwards,
}

/// What `values` adds to a series whose last point is `last`.
pub fn step(last: Option<&Last>, start_ns: u64, time_ns: u64, values: &[f64]) -> Step {
    let Some(last) = last else { return Step::Delta(values.to_vec()) };
    if start_ns > last.start_ns {
        return Step::Delta(values.to_vec());
    }
    if start_ns < last.start_ns || time_ns <= last.time_ns {
        return Step::Stale;
    }
    if values.len() != last.values.len() {
        // The shape changed (other bounds): take it as a new series.
        return Step::Delta(values.to_vec());
    }
    let d: Vec<f64> = values.iter().zip(&last.values).map(|(v, l)| v - l).collect();
    // Sums of floats may wobble in the last bits; anything more is a counter going backwards.
    if d.iter().zip(&last.values).any(|(d, l)| *d < -1e-9 * l.abs().max(1.0)) {
        return Step::Backwards;
    }
    Step::Delta(d.into_iter().map(|x| x.max(0.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(start: u64, time: u64, v: &[f64]) -> Last {
        Last { start_ns: start, time_ns: time, values: v.to_vec() }
    }

    #[test]
    fn cumulative_to_delta_table() {
        let l = last(100, 200, &[10.0, 2.5]);
        for (name, start, time, values, expected) in [
            ("first point: its whole value", None, 0, vec![], Step::Delta(vec![10.0, 2.5])),
            ("next point", Some(100), 300, vec![15.0, 3.0], Step::Delta(vec![5.0, 0.5])),
            ("unchanged", Some(100), 300, vec![10.0, 2.5], Step::Delta(vec![0.0, 0.0])),
            ("duplicate (same time)", Some(100), 200, vec![10.0, 2.5], Step::Stale),
            ("out of order (earlier time)", Some(100), 150, vec![8.0, 2.0], Step::Stale),
            ("restart: a new start time", Some(250), 260, vec![1.0, 0.1], Step::Delta(vec![1.0, 0.1])),
            ("an older incarnation", Some(50), 400, vec![99.0, 9.0], Step::Stale),
            ("backwards without a new start", Some(100), 300, vec![9.0, 2.5], Step::Backwards),
            ("float noise is not backwards", Some(100), 300, vec![10.0, 2.5 - 1e-12], Step::Delta(vec![0.0, 0.0])),
        ] {
            let (prev, s, t, v) = match start {
                None => (None, 100, 200, vec![10.0, 2.5]),
                Some(s) => (Some(&l), s, time, values),
            };
            assert_eq!(step(prev, s, t, &v), expected, "{name}");
        }
    }
}
