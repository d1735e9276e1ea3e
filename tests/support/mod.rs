//! Real services for integration tests: a single-node `mongod` replica set
//! and Azurite, each started on a free port in its own temporary directory
//! and stopped (by PID) when dropped. Binaries come from
//! `e2e/services.sh install` (env `MONGO_ADLS_MONGOD`, `MONGO_ADLS_AZURITE`,
//! or the default `.services/` paths).

// Each test file uses a part of this module.
#![allow(dead_code, unused_imports)]

pub mod load;

mod agent;
mod config;
mod delta;
mod faults;
mod lake;
mod process;
mod services;

pub use agent::*;
pub use config::*;
pub use delta::*;
pub use faults::*;
pub use lake::*;
pub use process::*;
pub use services::*;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mongodb::{bson::doc, options::ClientOptions, Client};
