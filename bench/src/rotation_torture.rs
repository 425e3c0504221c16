//! `rotation-torture`: the rotation torture test of `deckhand_tests::torture` with many more
//! cases than the CI run, printing its figures. Exits 1 (after printing the minimal failing
//! case) when an invariant breaks.

use std::error::Error;
use std::process::ExitCode;

/// Options of `rotation-torture`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Random cases to run.
    #[arg(long, default_value_t = 20_000)]
    cases: u32,
    /// Seed of the case generator (random when absent).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    if args.cases == 0 {
        return Err("--cases must be at least 1".into());
    }
    println!(
        "rotation-torture: {} random cases against deckhand-emulator (strict single-use rotation){}",
        args.cases,
        args.seed.map(|s| format!(", seed {s}")).unwrap_or_default()
    );
    match deckhand_tests::torture::run(args.cases, args.seed) {
        Ok(report) => {
            let per_case_ms = report.elapsed.as_secs_f64() * 1000.0 / report.cases as f64;
            println!("cases={}", report.cases);
            println!("violations=0");
            println!(
                "steps={} calls={} token_requests={} keys_persisted={}",
                report.steps, report.calls, report.token_requests, report.persisted
            );
            println!(
                "ended_healthy={} ended_rotation_lost={} ended_reauth_required={} stale_updates_refused={}",
                report.healthy, report.rotation_lost, report.reauth_required, report.spent_refused
            );
            println!(
                "max_caller_wait_ms={:.1}",
                report.max_wait.as_secs_f64() * 1000.0
            );
            println!(
                "elapsed_s={:.1} per_case_ms={per_case_ms:.2}",
                report.elapsed.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(violation) => {
            println!("violations=1");
            println!("{violation}");
            Ok(ExitCode::FAILURE)
        }
    }
}
