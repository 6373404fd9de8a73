//! `cachetx demo` on its own private servers (what `make demo` runs), shortened.

use cachetx_tests::cli::run;
use cachetx_tests::nscache_module;

/// The value of row `name` in the demo's summary table, one cell per run.
fn row(stdout: &str, name: &str) -> Vec<u64> {
    let line = stdout
        .lines()
        .find(|l| l.contains(name))
        .unwrap_or_else(|| panic!("no {name:?} row in:\n{stdout}"));
    line.split('┆')
        .skip(1)
        .map(|cell| {
            let cell = cell.trim().trim_end_matches('│').trim();
            cell.parse()
                .unwrap_or_else(|_| panic!("{name}: {cell:?} is not a number"))
        })
        .collect()
}

#[test]
fn demo_runs_both_scenarios_and_leases_leave_nothing_stale() {
    let module = nscache_module().display().to_string();
    let (status, stdout, stderr) = run(
        &["demo", "--private", "--seconds", "3", "--module", &module],
        &[],
    );
    assert!(
        status.success(),
        "demo failed ({status}):\n{stdout}\n{stderr}"
    );
    let reads = row(&stdout, "│ reads");
    let loader = row(&stdout, "│ loader calls  ");
    let stale_reads = row(&stdout, "│ stale reads");
    let stale_entries = row(&stdout, "│ entries left stale");
    let updates = row(&stdout, "│ status updates committed");
    assert_eq!(reads.len(), 2, "{stdout}");
    // Both runs did real work: reads, loads and committed updates.
    assert!(reads.iter().all(|&r| r > 0), "{stdout}");
    assert!(updates.iter().all(|&u| u > 0), "{stdout}");
    // Leases: the stampede is absorbed (fewer loads than reads) and nothing stale.
    assert!(loader[0] < reads[0], "{stdout}");
    assert_eq!(stale_reads[0], 0, "{stdout}");
    assert_eq!(stale_entries[0], 0, "{stdout}");
    // The relay confirmed every committed invalidation of both runs, so the stale
    // counts judged every read against every commit.
    assert_eq!(
        row(&stdout, "│ invalidations not confirmed"),
        vec![0, 0],
        "{stdout}"
    );
    // The stats tables of both servers follow.
    assert!(
        stdout.contains("demo.leases") && stdout.contains("demo.aside"),
        "{stdout}"
    );
    assert!(stdout.contains("Consumer lag"), "{stdout}");
}
