//! [`Value`] to and from PostgreSQL: a parameter takes the type the server inferred
//! for it (`Int` → INT8/INT4/INT2, range-checked; `Text` → TEXT/VARCHAR/…; `Bytes` →
//! BYTEA; `Null` → NULL of any type); a column converts by its type (INT2/4/8 → `Int`,
//! TEXT/VARCHAR/BPCHAR/NAME → `Text`, BYTEA → `Bytes`, BOOL → `Int` 0/1 as SQLite
//! answers, NULL → `Null`; any other type is `Corrupt`: cast it in the SQL).
//! Error messages name types and positions, never values.

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use crate::api::{Row, StoreError, Value};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

fn mismatch(what: &str, ty: &Type) -> BoxError {
    format!("{what} cannot be sent as PostgreSQL type {ty}").into()
}

fn is_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => {
                if *ty == Type::INT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*v)
                        .map_err(|_| mismatch("an integer out of range", ty))?
                        .to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*v)
                        .map_err(|_| mismatch("an integer out of range", ty))?
                        .to_sql(ty, out)
                } else {
                    Err(mismatch("an integer", ty))
                }
            }
            Value::Text(s) if is_text(ty) => s.as_str().to_sql(ty, out),
            Value::Text(_) => Err(mismatch("text", ty)),
            Value::Bytes(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            Value::Bytes(_) => Err(mismatch("bytes", ty)),
        }
    }

    /// Any type: the value checks the type in `to_sql`, with a clearer error.
    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Converts one PostgreSQL row to a [`Row`].
pub(crate) fn to_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    (0..row.len())
        .map(|i| column(row, i))
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

fn get<'a, T: FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<Option<T>, StoreError> {
    row.try_get::<_, Option<T>>(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn column(row: &tokio_postgres::Row, i: usize) -> Result<Value, StoreError> {
    let ty = row.columns()[i].type_();
    let v = if *ty == Type::INT8 {
        get::<i64>(row, i)?.map(Value::Int)
    } else if *ty == Type::INT4 {
        get::<i32>(row, i)?.map(|v| Value::Int(v.into()))
    } else if *ty == Type::INT2 {
        get::<i16>(row, i)?.map(|v| Value::Int(v.into()))
    } else if *ty == Type::BOOL {
        get::<bool>(row, i)?.map(|v| Value::Int(v.into()))
    } else if is_text(ty) {
        get::<String>(row, i)?.map(Value::Text)
    } else if *ty == Type::BYTEA {
        get::<Vec<u8>>(row, i)?.map(Value::Bytes)
    } else {
        return Err(StoreError::Corrupt(format!(
            "column {i} ({}) has PostgreSQL type {ty}: cast it to BIGINT, TEXT or BYTEA",
            row.columns()[i].name()
        )));
    };
    Ok(v.unwrap_or(Value::Null))
}
