//! Table names that are safe to splice into SQL.

use std::fmt;

/// The longest identifier part PostgreSQL keeps (`NAMEDATALEN - 1`); longer names would be
/// silently truncated, and two configured names could then collide.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// A table name, optionally schema-qualified (`schema.table`), whose parts are each 1 to
/// [`MAX_IDENTIFIER_LEN`] bytes of ASCII letters, digits and `_`, not starting with a digit.
///
/// Identifiers cannot be bound as query parameters, so a configurable table name ends up
/// inside the SQL text; this type is the one gate it passes. It is quoted on output as well, so
/// that a name that happens to be a keyword (`order`) still works.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

/// Why a string is not a valid [`TableName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a valid table name: {reason}")]
pub struct InvalidTableName {
    name: String,
    reason: &'static str,
}

impl InvalidTableName {
    /// The rejected name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which rule it breaks.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl TableName {
    /// Parses `table` or `schema.table`.
    pub fn new(name: &str) -> Result<Self, InvalidTableName> {
        let invalid = |reason| InvalidTableName {
            name: name.to_owned(),
            reason,
        };
        let mut parts = name.split('.');
        let (schema, table) = match (parts.next(), parts.next(), parts.next()) {
            (Some(table), None, None) => (None, table),
            (Some(schema), Some(table), None) => (Some(schema), table),
            _ => return Err(invalid("at most one `.` (schema.table) is allowed")),
        };
        for part in schema.into_iter().chain([table]) {
            check_identifier(part).map_err(invalid)?;
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
        })
    }

    /// The schema, when the name is qualified.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The table part.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The name quoted for SQL: `"schema"."table"` or `"table"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!(r#""{schema}"."{}""#, self.table),
            None => format!(r#""{}""#, self.table),
        }
    }
}

fn check_identifier(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("a name part is empty");
    }
    if part.len() > MAX_IDENTIFIER_LEN {
        return Err("a name part is longer than 63 bytes");
    }
    if part.as_bytes()[0].is_ascii_digit() {
        return Err("a name part starts with a digit");
    }
    if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("only ASCII letters, digits and `_` are allowed");
    }
    Ok(())
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_qualified_names_are_quoted() {
        assert_eq!(TableName::new("outbox").unwrap().quoted(), r#""outbox""#);
        let t = TableName::new("app.order").unwrap();
        assert_eq!((t.schema(), t.table()), (Some("app"), "order"));
        assert_eq!(t.to_string(), "app.order");
    }

    #[test]
    fn anything_that_could_escape_the_quotes_is_refused() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a.b.c",
            "1table",
            "out\"box",
            "outbox; DROP TABLE x",
            "out box",
            "outbox--",
            "évènements",
            &"a".repeat(64),
        ] {
            assert!(TableName::new(bad).is_err(), "{bad:?}");
        }
        assert!(TableName::new(&"a".repeat(63)).is_ok());
    }
}
