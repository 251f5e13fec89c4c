//! Bad flags are rejected before anything starts, with a message and exit code 2.

use std::process::Command;

const OPERATOR: &str = env!("CARGO_BIN_EXE_vworkspace-operator");

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(OPERATOR)
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flag_values_exit_2_with_the_reason() {
    for (args, needle) in [
        (
            &["--zap-log-level=loud"][..],
            "--zap-log-level: invalid log level \"loud\"",
        ),
        (&["--zap-encoder=xml"][..], "--zap-encoder"),
        (
            &["--metrics-bind-address=nope:x"][..],
            "--metrics-bind-address",
        ),
        (
            &["--health-probe-bind-address", "::::"][..],
            "--health-probe-bind-address",
        ),
        (&["--no-such-flag"][..], "unknown flag \"--no-such-flag\""),
        (
            &["--max-concurrent-reconciles=0"][..],
            "--max-concurrent-reconciles",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(stderr.contains("usage:"), "{args:?} prints usage");
    }
}

#[test]
fn version_and_help() {
    let out = Command::new(OPERATOR)
        .arg("version")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("vworkspace-operator v{}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(OPERATOR).arg("--help").output().expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--metrics-bind-address"));
}
