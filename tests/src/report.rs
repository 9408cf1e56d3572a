//! Recovery times measured by the fault tests, printed in one line format that
//! `scripts/faults.sh` collects into its report: `FAULT-RECOVERY|case|measure|seconds`.

use std::time::Duration;

/// Prints one measurement (visible with `--nocapture`, as the script runs the tests).
pub fn recovery(case: &str, measure: &str, took: Duration) {
    eprintln!("FAULT-RECOVERY|{case}|{measure}|{:.2}", took.as_secs_f64());
}
