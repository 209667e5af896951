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
    #[serde(default)]
    pub cutover: CutoverSection,
    /// Set on the pipeline Switchyard derives for switch-back (shadow -> old database): its
    /// transforms are the inverses of `transforms`, in reverse order. Never read from a file.
    #[serde(skip)]
    pub reversed: bool,
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
    /// Build the target's secondary structures after the copy instead of row by row during it:
    /// indexes (and the primary key and unique constraints they back) of target tables that are
    /// empty when the copy begins, where nothing else depends on them.
    pub defer_indexes: bool,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection { parallel: 2, chunk_rows: 100_000, defer_indexes: true }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplySection {
    /// Changes grouped into one target transaction (whole source transactions only; a larger
    /// source transaction is applied in parts of this size inside one target transaction).
    /// Large batches make catching up cheaper for the target: it prunes each heap page once per
    /// transaction, and looks up fewer buffers per change (docs/roadmap.md).
    pub max_batch_changes: usize,
    /// The same bound in MiB of changes (their values and what holds them): rows of wide tables
    /// make shorter batches, so memory stays bounded whatever the rows hold.
    pub max_batch_mib: usize,
    /// Apply with `session_replication_role = replica`, as native logical replication does:
    /// the target's foreign key checks and ordinary triggers do not fire for applied changes
    /// (the source checked them; `verify` counts orphans). False keeps them firing.
    pub as_replica: bool,
    /// Target connections a batch's row changes are spread over, by a hash of each row's key.
    /// One (the default) applies each batch in one target transaction; more lets a reader of
    /// the target see part of a source transaction while a batch commits (see
    /// `docs/parallel-apply.md`). Needs `as_replica`.
    pub parallel: usize,
}

impl ApplySection {
    pub fn batch_limit(&self) -> switchyard_core::BatchLimit {
        switchyard_core::BatchLimit { changes: self.max_batch_changes, bytes: self.max_batch_mib.saturating_mul(1 << 20) }
    }
}

impl Default for ApplySection {
    fn default() -> Self {
        ApplySection { max_batch_changes: 100_000, max_batch_mib: 32, as_replica: true, parallel: 1 }
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
    /// How chunks are hashed; see `DigestMethod`.
    pub digest: DigestMethod,
    /// Tables `switchyard verify` checks at once, each on its own pair of sessions.
    pub parallel: usize,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DigestMethod {
    /// Each column through its type's own hash inside PostgreSQL, where both sides run the same
    /// major version and the column has the same type on both; the canonical hash elsewhere.
    #[default]
    Auto,
    /// Always the canonical encoding (md5 of each row's record text): slower, engine-neutral.
    Canonical,
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
            digest: DigestMethod::Auto,
            parallel: 2,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CutoverSection {
    /// Gate: a probe written on the live side must be applied on the other within this.
    pub max_lag_seconds: f64,
    /// The fence mark must be applied within this after the fence, or the cutover rolls back.
    pub drain_timeout_seconds: f64,
    /// Gate: continuous verification has finished a full pass and shows no differences.
    pub require_verified: bool,
    /// How writers are fenced: any of "pgbouncer", "read_only", "hook". Default: "pgbouncer"
    /// when [cutover.pgbouncer] is set, otherwise "read_only"; "hook" too when `hook` is set.
    pub fence: Vec<FenceMethod>,
    /// The read_only fence sets these roles read-only; empty: the whole database.
    pub read_only_roles: Vec<String>,
    /// A command run (by `sh -c`) to fence, unfence and switch traffic; see docs/cutover.md.
    pub hook: String,
    pub pgbouncer: PgBouncerSection,
    pub auto_switchback: AutoSwitchbackSection,
}

impl Default for CutoverSection {
    fn default() -> Self {
        CutoverSection {
            max_lag_seconds: 5.0,
            drain_timeout_seconds: 30.0,
            require_verified: true,
            fence: Vec::new(),
            read_only_roles: Vec::new(),
            hook: String::new(),
            pgbouncer: PgBouncerSection::default(),
            auto_switchback: AutoSwitchbackSection::default(),
        }
    }
}

impl CutoverSection {
    /// The fence methods in effect, defaults applied.
    pub fn fence_methods(&self) -> Vec<FenceMethod> {
        let mut methods = self.fence.clone();
        if methods.is_empty() {
            methods.push(if self.pgbouncer.is_set() { FenceMethod::Pgbouncer } else { FenceMethod::ReadOnly });
            if !self.hook.is_empty() {
                methods.push(FenceMethod::Hook);
            }
        }
        methods
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FenceMethod {
    Pgbouncer,
    ReadOnly,
    Hook,
}

/// PgBouncer in front of the application; empty strings mean "not used".
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgBouncerSection {
    /// The admin console, e.g. postgres://pgbouncer@127.0.0.1:6432/pgbouncer
    pub admin_url: String,
    /// The database entry the application connects to.
    pub database: String,
    /// The pgbouncer.ini holding that entry; Switchyard rewrites its host, port and dbname.
    pub config: String,
}

impl PgBouncerSection {
    pub fn is_set(&self) -> bool {
        !self.admin_url.is_empty()
    }
}

/// Switching back on its own in a watch window after cutover; off by default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoSwitchbackSection {
    pub enabled: bool,
    /// How long after cutover the triggers are watched.
    pub watch_minutes: f64,
    /// Trigger: the reverse pipeline lags more than this (a probe on the shadow not applied).
    pub max_reverse_lag_seconds: f64,
    /// Trigger: the reverse pipeline fails this many times in a row.
    pub reverse_failures: u32,
    /// Trigger: this command (run by `sh -c`) fails `health_failures` times in a row.
    pub health_check: String,
    pub health_failures: u32,
    pub health_interval_seconds: f64,
    /// Trigger: a verification pass of the way back (shadow vs old database, through the
    /// inverse transforms) finds differing rows; run this often (0: never).
    pub drift_check_minutes: f64,
}

impl Default for AutoSwitchbackSection {
    fn default() -> Self {
        AutoSwitchbackSection {
            enabled: false,
            watch_minutes: 30.0,
            max_reverse_lag_seconds: 30.0,
            reverse_failures: 3,
            health_check: String::new(),
            health_failures: 3,
            health_interval_seconds: 5.0,
            drift_check_minutes: 5.0,
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
