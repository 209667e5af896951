use bytes::Bytes;

/// One column value of one row.
///
/// Values travel in their engine's own text form for the column's type, unparsed: a numeric keeps
/// every digit, a float keeps `-0` and `NaN`, a timestamp keeps `infinity` and its era, exactly as
/// the server printed them. When source and target types agree the text is handed to the target
/// as it came, so no value is ever re-encoded on the way (and none loses precision).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Null,
    /// A large (TOASTed) value that the source did not send because the change did not touch it.
    /// It never turns into NULL: the sink leaves the target's current value in place.
    Unchanged,
    /// The value's text form (UTF-8), as the source's type prints it.
    Text(Bytes),
}

impl Value {
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(Bytes::from(s.into()))
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Text(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// A value from text as a database row gives it (`None` is NULL).
    pub fn from_text(text: Option<String>) -> Value {
        text.map(Value::text).unwrap_or(Value::Null)
    }

    /// The value's text, `None` for NULL (and for values that carry none).
    pub fn to_text(&self) -> Option<String> {
        self.as_str().map(str::to_string)
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}
