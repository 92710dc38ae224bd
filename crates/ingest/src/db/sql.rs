//! The little SQL both backends speak: statements with `$1`-style parameters, values of four
//! kinds, rows read by column number. SQLite and PostgreSQL each implement [`Sql`]; the
//! queries in [`super`] are written once against it.
//!
//! Values cross untyped ([`Val`]) and are typed at the edge: PostgreSQL names the type of
//! each parameter and column, and a value that does not fit it is an error naming both,
//! not a silent conversion.

use std::error::Error as StdError;

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, Value as LiteValue, ValueRef};

use super::DbError;

/// One value: a parameter or a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// SQL `NULL`.
    Null,
    /// An integer (a boolean is 0 or 1).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
}

/// What can be a parameter.
pub trait ToVal {
    /// As a value.
    fn to_val(&self) -> Val;
}

impl ToVal for str {
    fn to_val(&self) -> Val {
        Val::Text(self.to_owned())
    }
}
impl ToVal for String {
    fn to_val(&self) -> Val {
        Val::Text(self.clone())
    }
}
impl ToVal for i64 {
    fn to_val(&self) -> Val {
        Val::Int(*self)
    }
}
impl ToVal for f64 {
    fn to_val(&self) -> Val {
        Val::Real(*self)
    }
}
impl ToVal for bool {
    fn to_val(&self) -> Val {
        Val::Int(i64::from(*self))
    }
}
impl<T: ToVal> ToVal for Option<T> {
    fn to_val(&self) -> Val {
        self.as_ref().map_or(Val::Null, ToVal::to_val)
    }
}
impl<T: ToVal + ?Sized> ToVal for &T {
    fn to_val(&self) -> Val {
        (**self).to_val()
    }
}

/// The parameters of a statement, `$1` first.
macro_rules! args {
    ($($e:expr),* $(,)?) => {
        &[$($crate::db::sql::ToVal::to_val(&$e)),*] as &[$crate::db::sql::Val]
    };
}
pub(crate) use args;

/// What a column can be read as.
pub trait FromVal: Sized {
    /// The value as `Self`, if it is one.
    fn from_val(v: &Val) -> Option<Self>;
}

impl FromVal for String {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromVal for i64 {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromVal for f64 {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Real(f) => Some(*f),
            // SQLite keeps a whole REAL as it was written, but a value typed in by hand may
            // be an integer.
            Val::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl FromVal for bool {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}
impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Null => Some(None),
            v => T::from_val(v).map(Some),
        }
    }
}

/// A row of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Val>);

impl Row {
    /// Column `i` as `T`; a column of another kind is [`DbError::Corrupt`], naming it.
    pub fn get<T: FromVal>(&self, i: usize) -> Result<T, DbError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| DbError::Corrupt(format!("column {i}: the query has no such column")))?;
        T::from_val(v).ok_or_else(|| {
            DbError::Corrupt(format!(
                "column {i} ({}), not a {}",
                kind(v),
                std::any::type_name::<T>()
            ))
        })
    }
}

fn kind(v: &Val) -> &'static str {
    match v {
        Val::Null => "NULL",
        Val::Int(_) => "an integer",
        Val::Real(_) => "a real",
        Val::Text(_) => "text",
    }
}

/// A connection or transaction of either backend.
pub trait Sql {
    /// Runs a statement; the rows it changed.
    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError>;
    /// Runs a query; every row.
    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Row>, DbError>;
    /// Runs a query; its first row, if any.
    fn query_opt(&mut self, sql: &str, args: &[Val]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
}

/// `$1` → `?1`: SQLite reads `$1` as a parameter *named* "$1", numbered by first appearance,
/// which is another order whenever `$2` comes first.
fn lite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// SQLite: a connection or (through `Deref`) a transaction.
pub struct Lite<'a>(pub &'a rusqlite::Connection);

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Owned(LiteValue::Null),
            Val::Int(i) => ToSqlOutput::Owned(LiteValue::Integer(*i)),
            Val::Real(f) => ToSqlOutput::Owned(LiteValue::Real(*f)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn lite_row(r: &rusqlite::Row, n: usize) -> rusqlite::Result<Row> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(match r.get_ref(i)? {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            ValueRef::Real(f) => Val::Real(f),
            ValueRef::Text(t) => Val::Text(
                std::str::from_utf8(t)
                    .map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            i,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?
                    .to_owned(),
            ),
            ValueRef::Blob(_) => {
                return Err(rusqlite::Error::InvalidColumnType(
                    i,
                    "a blob where this program writes none".into(),
                    rusqlite::types::Type::Blob,
                ));
            }
        });
    }
    Ok(Row(v))
}

impl Sql for Lite<'_> {
    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        let mut st = self.0.prepare_cached(&lite_sql(sql))?;
        Ok(st.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Row>, DbError> {
        let mut st = self.0.prepare_cached(&lite_sql(sql))?;
        let n = st.column_count();
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| lite_row(r, n))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// PostgreSQL: a client or a transaction.
pub struct Pg<'a, C>(pub &'a mut C);

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for Val {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Val::Null, _) => Ok(IsNull::Yes),
            (Val::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Val::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Val::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Val::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Val::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Val::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Val::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                s.as_str().to_sql(ty, out)
            }
            (v, ty) => Err(format!("{} given for a parameter of type {ty}", kind(v)).into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked against the value in `to_sql`, where both are known.
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Val {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Val::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Val::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Val::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Val::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Val::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Val::Real(f32::from_sql(ty, raw)?.into()),
            _ => Val::Text(<&str>::from_sql(ty, raw)?.to_owned()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Val::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::BOOL
                | Type::FLOAT8
                | Type::FLOAT4
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
        )
    }
}

fn pg_args(args: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

fn pg_row(r: &postgres::Row) -> Result<Row, DbError> {
    (0..r.len())
        .map(|i| r.try_get::<_, Val>(i).map_err(DbError::from))
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

impl<C: postgres::GenericClient> Sql for Pg<'_, C> {
    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        Ok(self.0.execute(sql, &pg_args(args))?)
    }

    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Row>, DbError> {
        self.0
            .query(sql, &pg_args(args))?
            .iter()
            .map(pg_row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_sqlites_and_dollar_quotes_do_not() {
        assert_eq!(
            lite_sql("UPDATE t SET a = $2 WHERE b = $1 AND c = '$x'"),
            "UPDATE t SET a = ?2 WHERE b = ?1 AND c = '$x'"
        );
    }

    #[test]
    fn a_column_of_another_kind_is_named_not_converted() {
        let row = Row(vec![Val::Text("x".into()), Val::Null, Val::Int(1)]);
        assert_eq!(row.get::<String>(0).unwrap(), "x");
        assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
        assert!(row.get::<bool>(2).unwrap());
        assert_eq!(row.get::<f64>(2).unwrap(), 1.0);
        let e = row.get::<i64>(0).unwrap_err().to_string();
        assert!(e.contains("column 0 (text), not a i64"), "{e}");
        assert!(row.get::<String>(1).is_err());
        assert!(row.get::<String>(9).is_err());
    }
}
