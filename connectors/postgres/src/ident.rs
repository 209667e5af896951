//! The one place PostgreSQL identifiers are quoted. Every table, column, schema, slot and
//! publication name that reaches SQL text goes through here; values never do (they go as
//! parameters or COPY data).

use switchyard_core::TableId;

/// `name` as a double-quoted identifier, embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `"schema"."table"`.
pub fn quote_table(table: &TableId) -> String {
    format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name))
}

/// A comma-separated list of quoted identifiers.
pub fn quote_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(quote_ident).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_everything_that_could_escape() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("Straße x"), "\"Straße x\"");
        assert_eq!(quote_table(&TableId::new("a\"b", "C d")), "\"a\"\"b\".\"C d\"");
    }
}
