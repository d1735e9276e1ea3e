//! `snowflake-sql`: the SQL that loads a sink's lake into Snowflake.

use super::*;

pub(super) fn snowflake_sql(opts: &Opts, options: &crate::snowflake::Options) -> i32 {
    let config = match load(opts, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::snowflake::generate(&config, options) {
        Ok(sql) => {
            print!("{sql}");
            0
        }
        Err(e) => {
            eprintln!("Error: {e}");
            EXIT_CONFIG
        }
    }
}
