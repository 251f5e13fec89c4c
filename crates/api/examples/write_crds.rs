//! Regenerates the committed CRD files from the Rust types:
//! `cargo run -p vworkspace-api --example write_crds`.
//!
//! The operator binary's `crds` subcommand does the same through
//! `vworkspace_api::crds::write_all`; this example exists so the files can be produced
//! without building the operator.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    // crates/api -> repository root.
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo_root = repo_root.canonicalize().unwrap_or(repo_root);
    match vworkspace_api::crds::write_all(&repo_root) {
        Ok(paths) => {
            for path in paths {
                println!(
                    "{}",
                    path.strip_prefix(&repo_root).unwrap_or(&path).display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("write_crds: {err}");
            ExitCode::FAILURE
        }
    }
}
