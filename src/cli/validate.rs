//! `validate`: the configuration checked and, unless `--no-environment`,
//! the components built and their healthchecks run.

use super::*;

pub(super) async fn validate(opts: &Opts, no_environment: bool) -> i32 {
    let config = match load(opts, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if no_environment {
        println!("Configuration is valid ({} file(s)).", opts.config.len());
        return 0;
    }
    if crate::validate::run(&config).await {
        println!("Configuration is valid and healthchecks passed.");
        0
    } else {
        EXIT_CONFIG
    }
}
