//! `eventsPerReplica` for a rate target, measured from a `record` of a group that was
//! saturated: while a backlog waits, the group processes as fast as it can, and what it
//! processed between two points is what was produced minus how much the lag grew.
//!
//! The record is cut into windows of a fixed length; a window counts when every point in it
//! has a backlog of at least `min_lag`, the same members (no rebalance inside), and no stale
//! input. Each such window gives (produced - lag growth) / seconds / members; the median is
//! the estimate, the quartiles its spread.

use serde::Serialize;

/// One row of a `record` CSV, the columns this needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub seconds: f64,
    pub lag: f64,
    pub members: Option<u32>,
    pub stale_inputs: u64,
    pub produced: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Median events per second per replica over the windows used.
    pub events_per_replica: f64,
    pub p25: f64,
    pub p75: f64,
    /// Windows that qualified, and how many there were.
    pub windows_used: usize,
    pub windows: usize,
    pub window_seconds: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EstimateError {
    #[error("line {line}: {message}")]
    Csv { line: usize, message: String },
    #[error(
        "no window of {window_seconds} s with a backlog of at least {min_lag} throughout and a steady membership \
         ({windows} windows in the record): record while the group is saturated (a backlog waiting), or lower --min-lag"
    )]
    NoSaturatedWindow { window_seconds: f64, min_lag: f64, windows: usize },
}

/// Parses a `record` CSV by its header (`seconds`, `lag`, `members`, `stale_inputs`,
/// `produced`); a record made before `produced` existed is refused with the reason.
pub fn parse(text: &str) -> Result<Vec<Row>, EstimateError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or(EstimateError::Csv { line: 1, message: "empty record".into() })?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let find = |name: &str| {
        columns.iter().position(|c| *c == name).ok_or_else(|| EstimateError::Csv {
            line: 1,
            message: format!(
                "no {name:?} column (a record from `lag-tuner record` of this release has \
                 seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs,produced)"
            ),
        })
    };
    let (seconds, lag, members, stale, produced) =
        (find("seconds")?, find("lag")?, find("members")?, find("stale_inputs")?, find("produced")?);
    let mut rows = Vec::new();
    for (i, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let number = |at: usize, what: &str| -> Result<f64, EstimateError> {
            let cell = cells.get(at).copied().unwrap_or("");
            cell.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| EstimateError::Csv { line: i + 1, message: format!("{what} {cell:?} is not a number") })
        };
        let members = match cells.get(members).copied().unwrap_or("") {
            "" => None,
            m => Some(
                m.parse::<u32>().map_err(|_| EstimateError::Csv { line: i + 1, message: format!("members {m:?}") })?,
            ),
        };
        rows.push(Row {
            seconds: number(seconds, "seconds")?,
            lag: number(lag, "lag")?,
            members,
            stale_inputs: number(stale, "stale_inputs")? as u64,
            produced: number(produced, "produced")?,
        });
    }
    Ok(rows)
}

/// The estimate over windows of `window_seconds`, counting only saturated ones.
pub fn estimate(rows: &[Row], window_seconds: f64, min_lag: f64) -> Result<Estimate, EstimateError> {
    let mut rates = Vec::new();
    let mut windows = 0;
    let mut start = 0;
    while start + 1 < rows.len() {
        // A window spans at least two points, however short it is asked to be.
        let Some(end) = rows[start + 1..].iter().position(|r| r.seconds - rows[start].seconds >= window_seconds) else {
            break;
        };
        let end = start + 1 + end;
        windows += 1;
        let window = &rows[start..=end];
        let members = window[0].members.filter(|m| *m > 0);
        let saturated =
            window.iter().all(|r| r.lag >= min_lag && r.stale_inputs == 0 && r.members == window[0].members);
        if let (true, Some(members)) = (saturated, members) {
            let (a, b) = (window[0], window[window.len() - 1]);
            let processed = (b.produced - a.produced) - (b.lag - a.lag);
            let seconds = b.seconds - a.seconds;
            if seconds > 0.0 && processed >= 0.0 {
                rates.push(processed / seconds / f64::from(members));
            }
        }
        start = end;
    }
    if rates.is_empty() {
        return Err(EstimateError::NoSaturatedWindow { window_seconds, min_lag, windows });
    }
    rates.sort_by(f64::total_cmp);
    let at = |q: f64| rates[((rates.len() - 1) as f64 * q).round() as usize];
    Ok(Estimate {
        events_per_replica: at(0.5),
        p25: at(0.25),
        p75: at(0.75),
        windows_used: rates.len(),
        windows,
        window_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: produced at `rate`/s, `members` each processing `per`/s while a backlog waits.
    fn record(seconds: u32, rate: f64, members: impl Fn(f64) -> u32, per: f64, start_lag: f64) -> String {
        let mut out = String::from("seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs,produced\n");
        let (mut lag, mut produced) = (start_lag, 0.0);
        for s in 0..=seconds / 5 {
            let t = f64::from(s * 5);
            let m = members(t);
            out.push_str(&format!("{t},{lag},{m},{lag},{m},{},classic,0,{produced}\n", 1000.0 + t));
            produced += rate * 5.0;
            lag = (lag + (rate - f64::from(m) * per) * 5.0).max(0.0);
        }
        out
    }

    #[test]
    fn a_saturated_group_gives_its_per_replica_rate() {
        // 3 members of 1,000/s against 5,000/s: the backlog grows, they stay saturated.
        let rows = parse(&record(600, 5000.0, |_| 3, 1000.0, 10_000.0)).expect("parse");
        let e = estimate(&rows, 60.0, 1000.0).expect("estimate");
        assert_eq!((e.events_per_replica, e.p25, e.p75, e.windows_used, e.windows), (1000.0, 1000.0, 1000.0, 10, 10));
    }

    #[test]
    fn windows_with_a_rebalance_or_no_backlog_are_left_out() {
        // Members change at 300 s; after 400 s 8 members drain the backlog to 0.
        let rows = parse(&record(
            900,
            5000.0,
            |t| {
                if t < 300.0 {
                    3
                } else if t < 400.0 {
                    4
                } else {
                    8
                }
            },
            1000.0,
            10_000.0,
        ))
        .expect("parse");
        let e = estimate(&rows, 60.0, 1000.0).expect("estimate");
        assert_eq!(e.events_per_replica, 1000.0);
        assert!(e.windows_used < e.windows, "{e:?}");
        let idle = parse(&record(600, 100.0, |_| 3, 1000.0, 0.0)).expect("parse");
        assert!(matches!(estimate(&idle, 60.0, 1000.0), Err(EstimateError::NoSaturatedWindow { .. })));
    }

    #[test]
    fn a_window_of_zero_still_spans_two_points() {
        let rows = parse(&record(60, 5000.0, |_| 3, 1000.0, 10_000.0)).expect("parse");
        let e = estimate(&rows, 0.0, 1000.0).expect("estimate");
        assert_eq!((e.events_per_replica, e.windows), (1000.0, 12));
    }

    #[test]
    fn old_or_broken_records_are_refused_with_the_line() {
        let old = "seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs\n0,1,1,1,1,1,classic,0\n";
        assert!(parse(old).expect_err("old").to_string().contains("no \"produced\" column"));
        let broken =
            "seconds,lag,replicas,served,members,unix_time,protocol,stale_inputs,produced\n0,x,1,1,1,1,classic,0,5\n";
        assert_eq!(parse(broken).expect_err("broken").to_string(), "line 2: lag \"x\" is not a number");
    }
}
