//! Pipeline configurations for tests, written as TOML: the `mongo` source
//! with the suite's quick settings, a `[state]` table on Azurite, and the
//! sinks a test names. Options a test gives replace defaults of the same
//! key.

use super::*;

/// A config under construction; [`PipelineConfig::write`] saves it.
pub struct PipelineConfig {
    globals: Vec<String>,
    state: Option<String>,
    source: Vec<String>,
    sinks: Vec<String>,
}

/// `defaults` with each line of `options` replacing the default that
/// sets the same key, then the options.
pub fn with_options(defaults: &[&str], options: &str) -> String {
    let key = |line: &str| {
        line.split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let given: Vec<String> = options.lines().map(key).collect();
    let mut lines: Vec<&str> = defaults
        .iter()
        .filter(|l| !given.contains(&key(l)))
        .copied()
        .collect();
    lines.extend(options.lines());
    lines.join("\n")
}

impl PipelineConfig {
    /// The change stream of `uri` as source `mongo`, read with short
    /// waits (`max_await_time_ms = 200`) and checkpointed every 100 ms.
    pub fn mongo(uri: &str) -> Self {
        Self {
            globals: Vec::new(),
            state: None,
            source: vec![
                "type = \"mongodb_change_stream\"".into(),
                format!("uri = \"{uri}\""),
                "max_await_time_ms = 200".into(),
                "checkpoint_interval_ms = 100".into(),
            ],
            sinks: Vec::new(),
        }
    }

    /// A global option line (`api.address = ...`).
    pub fn global(mut self, line: &str) -> Self {
        self.globals.push(line.to_string());
        self
    }

    /// `data_dir` at `dir`.
    pub fn data_dir(self, dir: &Path) -> Self {
        let line = format!("data_dir = \"{}\"", dir.display());
        self.global(&line)
    }

    /// The state in Azurite at `account_url` (container `state`), pipeline
    /// `id`, with `lease_secs`.
    pub fn azure_state(mut self, account_url: &str, id: &str, lease_secs: u32) -> Self {
        self.state = Some(format!(
            "[state]\nstore = \"azure_blob\"\naccount_url = \"{account_url}\"\ncontainer = \"state\"\ncreate_container = true\nauth.shared_key = \"{AZURITE_KEY}\"\nid = \"{id}\"\nlease_secs = {lease_secs}\n"
        ));
        self
    }

    /// Source options (lines), replacing the defaults they set again.
    pub fn source(mut self, options: &str) -> Self {
        let defaults: Vec<&str> = self.source.iter().map(String::as_str).collect();
        let merged = with_options(&defaults, options);
        self.source = merged.lines().map(str::to_string).collect();
        self
    }

    /// A sink: its whole table, `[sinks.<id>]` included.
    pub fn sink(mut self, table: &str) -> Self {
        self.sinks.push(table.to_string());
        self
    }

    pub fn text(&self) -> String {
        let mut text = self.globals.join("\n");
        text.push_str("\n\n");
        if let Some(state) = &self.state {
            text.push_str(state);
            text.push('\n');
        }
        text.push_str("[sources.mongo]\n");
        text.push_str(&self.source.join("\n"));
        text.push_str("\n\n");
        text.push_str(&self.sinks.join("\n"));
        text.push('\n');
        text
    }

    /// Writes the config to `path` and returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.text()).unwrap();
        path.to_path_buf()
    }
}
