use serde::Deserialize;

/// A pipeline file, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub pipeline: PipelineSection,
    pub source: SourceSection,
    pub target: TargetSection,
    #[serde(default, rename = "transform")]
    pub transforms: Vec<TransformSection>,
    #[serde(default)]
    pub snapshot: SnapshotSection,
    #[serde(default)]
    pub apply: ApplySection,
    #[serde(default)]
    pub verify: VerifySection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub tables: Vec<String>,
    /// Defaults to `switchyard_<pipeline name>`.
    pub slot: Option<String>,
    pub publication: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default = "default_checkpoint_schema")]
    pub checkpoint_schema: String,
}

fn default_checkpoint_schema() -> String {
    "switchyard".to_string()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSection {
    /// Adds a column holding the same value in every row (the tenant's id).
    AttachColumn {
        #[serde(default)]
        tables: Vec<String>,
        column: String,
        value: String,
    },
    RenameColumn {
        #[serde(default)]
        tables: Vec<String>,
        from: String,
        to: String,
    },
    DropColumn {
        #[serde(default)]
        tables: Vec<String>,
        column: String,
    },
    /// Renames a table, possibly into another schema (`to = "tenant.users"`).
    RenameTable {
        table: String,
        to: String,
    },
    /// Keeps only rows whose column satisfies a condition.
    Filter {
        #[serde(default)]
        tables: Vec<String>,
        column: String,
        op: FilterOp,
        value: Option<String>,
        #[serde(default)]
        values: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    Eq,
    Ne,
    In,
    NotIn,
    IsNull,
    IsNotNull,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    /// Tables (or chunks of one table) copied at once.
    pub parallel: usize,
    /// Rows per chunk of a table with an integer key; a chunk is the unit a resumed copy restarts.
    pub chunk_rows: u64,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection { parallel: 4, chunk_rows: 100_000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplySection {
    /// Changes grouped into one target transaction (whole source transactions only; a larger
    /// source transaction is applied in parts of this size inside one target transaction).
    pub max_batch_changes: usize,
}

impl Default for ApplySection {
    fn default() -> Self {
        ApplySection { max_batch_changes: 20_000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySection {
    /// Rows per checksum chunk (tables with an integer first key column).
    pub chunk_rows: u64,
    /// Differences listed per table before the rest are only counted.
    pub show_differences: usize,
    /// How long a differing chunk may wait for the stream to pass the source read before it is
    /// compared again.
    pub settle_seconds: u64,
    /// Business rules checked on the target: SQL predicates that every row must satisfy.
    pub rules: Vec<RuleSection>,
    /// Verify continuously inside `switchyard run`: a first full pass, then the chunks changes
    /// touched, and a slow full pass every `full_pass_minutes`.
    pub continuous: bool,
    /// Rows per chunk for continuous verification: smaller than a one-shot pass's, so re-checking
    /// what changes touched reads little.
    pub continuous_chunk_rows: u64,
    /// Rows per second the continuous verifier may read from each side.
    pub rows_per_second: u64,
    pub full_pass_minutes: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// The target table, e.g. "public.orders".
    pub table: String,
    pub name: String,
    /// An SQL predicate over the table's columns, e.g. "amount >= 0".
    pub check: String,
}

impl Default for VerifySection {
    fn default() -> Self {
        VerifySection {
            chunk_rows: 100_000,
            show_differences: 10,
            settle_seconds: 30,
            rules: Vec::new(),
            continuous: true,
            continuous_chunk_rows: 10_000,
            rows_per_second: 200_000,
            full_pass_minutes: 60,
        }
    }
}

impl PipelineFile {
    pub fn slot_name(&self) -> String {
        self.source.slot.clone().unwrap_or_else(|| format!("switchyard_{}", self.pipeline.name))
    }

    pub fn publication_name(&self) -> String {
        self.source.publication.clone().unwrap_or_else(|| format!("switchyard_{}", self.pipeline.name))
    }
}
