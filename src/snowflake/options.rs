//! `snowflake-sql`'s command-line options.

/// Names and schedule chosen on the command line.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The sink id; needed when the config has several lake sinks.
    #[arg(long)]
    pub sink: Option<String>,
    /// Bronze table (`name` or `db.schema.name`).
    #[arg(long, default_value = "mongo_events")]
    pub table: String,
    /// External stage name.
    #[arg(long, default_value = "mongo_adls_stage")]
    pub stage: String,
    /// Storage integration name.
    #[arg(long, default_value = "mongo_adls_integration")]
    pub integration: String,
    /// File format name.
    #[arg(long, default_value = "mongo_adls_jsonl")]
    pub file_format: String,
    /// Cron schedule (five fields, UTC) of the load task.
    #[arg(long, default_value = "*/15 * * * *")]
    pub schedule: String,
    /// Warehouse for the task (default: a serverless task).
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Hour for `ALTER PIPE ... REFRESH PREFIX`, e.g. 2025-08-10T19
    /// (in the sink's time zone; default: placeholders).
    #[arg(long)]
    pub refresh_hour: Option<String>,
    /// Delta: external volume name.
    #[arg(long, default_value = "mongo_adls_volume")]
    pub volume: String,
    /// Delta: catalog integration name.
    #[arg(long, default_value = "mongo_adls_delta")]
    pub catalog: String,
    /// Delta: a collection (`db.coll`) to make a table for; repeat for
    /// each (default: the collections the source names).
    #[arg(long = "collection")]
    pub collections: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sink: None,
            table: "mongo_events".into(),
            stage: "mongo_adls_stage".into(),
            integration: "mongo_adls_integration".into(),
            file_format: "mongo_adls_jsonl".into(),
            schedule: "*/15 * * * *".into(),
            warehouse: None,
            refresh_hour: None,
            volume: "mongo_adls_volume".into(),
            catalog: "mongo_adls_delta".into(),
            collections: Vec::new(),
        }
    }
}
