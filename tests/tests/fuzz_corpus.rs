//! Replays the fuzz corpora (fuzz/corpus/<target>/) and every past finding
//! (fuzz/regressions/<target>/) through the fuzz targets' checks, in the normal test run: a
//! regression of a fixed finding fails here without libFuzzer. `scripts/fuzz.sh` fuzzes.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// A fuzz target's check.
type Check = fn(&[u8]);

fn replay(target: &str, check: Check) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("read");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails its check", path.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_corpus_input_and_past_finding_passes_its_check() {
    let targets: [(&str, Check); 5] = [
        ("selector", checks::selector),
        ("quantity", checks::quantity),
        ("metric_path", checks::metric_path),
        ("event", checks::event),
        ("config", checks::config),
    ];
    for (name, check) in targets {
        let n = replay(name, check);
        assert!(n >= 3, "{name}: only {n} inputs replayed");
        eprintln!("{name}: {n} inputs replayed");
    }
}
