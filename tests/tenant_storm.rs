//! The fairness load tool (`examples/tenant-storm`, docs/performance.md "Fairness between
//! tenants") run once at a small size, so it cannot rot: it must finish and print every
//! table row. It asserts no duration (the machine is shared); the numbers are for people.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn tenant_storm_runs_at_a_small_size_and_prints_every_row() {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/tenant-storm");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --examples` (scripts/test does)",
        bin.display()
    );
    let out = Command::new(&bin)
        .args([
            "--storm",
            "40",
            "--threads",
            "4",
            "--changes",
            "5",
            "--slots",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for row in [
        "| alone | b | 10 |",
        "| storm | a (4 threads) | 40 |",
        "| alone | b | 5 |",
        "| during a's storm | b | 5 |",
        "a's storm: 40 SVIDs (and b's 5)",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
}
