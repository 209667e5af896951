use std::fmt;

/// A table's name within its database: schema (namespace) and table name, unquoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId { schema: schema.into(), name: name.into() }
    }

    /// Parses `schema.table` (or `table`, in `default_schema`). Names with dots in them are
    /// written in double quotes: `"my.schema"."t"`.
    pub fn parse(text: &str, default_schema: &str) -> Option<TableId> {
        let parts = split_qualified(text)?;
        match parts.as_slice() {
            [name] => Some(TableId::new(default_schema, name.clone())),
            [schema, name] => Some(TableId::new(schema.clone(), name.clone())),
            _ => None,
        }
    }
}

fn split_qualified(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        return None;
    }
    parts.push(current);
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type as its engine spells it in DDL, with modifiers: `numeric(12,2)`, `public.mood`.
    pub type_name: String,
    /// The engine's type identifier (PostgreSQL: the type OID); 0 where the engine has none.
    pub type_oid: u32,
    pub nullable: bool,
    /// The column's default as DDL in its engine's dialect, if it has one: a column that appears
    /// mid-stream is added to the target with it, so existing rows get the same value.
    pub default: Option<String>,
}

/// The shape of one table as a change carries it: columns in order and which of them identify a
/// row (the primary key, or the replica identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<Column>,
    /// Indices into `columns`, in key order.
    pub key: Vec<usize>,
}

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn key_names(&self) -> Vec<&str> {
        self.key.iter().map(|&i| self.columns[i].name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qualified_names() {
        assert_eq!(TableId::parse("users", "public"), Some(TableId::new("public", "users")));
        assert_eq!(TableId::parse("app.users", "public"), Some(TableId::new("app", "users")));
        assert_eq!(
            TableId::parse("\"my.schema\".\"Tab\"\"le\"", "public"),
            Some(TableId::new("my.schema", "Tab\"le"))
        );
        assert_eq!(TableId::parse("a.b.c", "public"), None);
        assert_eq!(TableId::parse("a.", "public"), None);
        assert_eq!(TableId::parse("\"open", "public"), None);
    }
}
