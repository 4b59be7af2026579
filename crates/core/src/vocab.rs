//! The one way a word of the domain vocabulary (a stage, a task or run state, a split, a family,
//! a verdict) is spelled: [`vocabulary!`] gives an enum its stored name (`as_str`), every value
//! (`ALL`), `Display`, `FromStr` and `TryFrom<String>`.
//!
//! With the `sqlx` feature (the store turns it on) each word is also a Postgres TEXT value
//! (`sqlx::Type`, `Decode`, `Encode`): rows decode straight into the enum, `Option<Split>`
//! included, and queries bind it by name. A column holding an unknown name is a decode error
//! naming the column, never a panic or a silent default. Postgres constrains each of these
//! columns to the same names (`CHECK ... IN (...)`, sql/). This crate runs no query: the feature
//! only teaches sqlx how a word is spelled.

/// Implements the vocabulary of a fieldless enum: `vocabulary!(Stage, "stage", { ItemProfile =>
/// "item_profile", ... })`. The second argument names the word in errors ("unknown stage").
#[macro_export]
macro_rules! vocabulary {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in the order the vocabulary lists them.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// The name Postgres, the CLI and JSON use (serde's names are the same: tested).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::vocab::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| $crate::vocab::UnknownName {
                    what: $what,
                    name: s.to_string(),
                    known: &[$($name),+],
                })
            }
        }

        impl ::std::convert::TryFrom<String> for $ty {
            type Error = $crate::vocab::UnknownName;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        $crate::__text_column!($ty);
    };
}

/// A vocabulary word as a Postgres TEXT value (with the `sqlx` feature; nothing without it). The
/// feature is decided when this crate is built, so a word declared in another crate (the store's
/// batch states) gets the same impls.
#[cfg(feature = "sqlx")]
#[doc(hidden)]
#[macro_export]
macro_rules! __text_column {
    ($ty:ident) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $ty {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $ty {
            fn decode(value: ::sqlx::postgres::PgValueRef<'r>) -> Result<Self, ::sqlx::error::BoxDynError> {
                let name = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                Ok(name.parse::<$ty>()?)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}

#[cfg(not(feature = "sqlx"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __text_column {
    ($ty:ident) => {};
}

/// A name that is not a word of the vocabulary it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (one of: {})", known.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub known: &'static [&'static str],
}

impl From<UnknownName> for String {
    fn from(e: UnknownName) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::Verdict;
    use crate::data::Family;
    use crate::settings::RunRoute;
    use crate::stage::{RunState, Split, Stage, TaskState};

    /// Each word's stored name is also its JSON name and parses back to itself.
    fn agree<T>(words: &[T])
    where
        T: serde::Serialize + std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug + Copy,
        T::Err: std::fmt::Debug,
    {
        for &w in words {
            assert_eq!(serde_json::to_value(w).ok(), Some(serde_json::Value::from(w.to_string())), "{w:?}");
            assert_eq!(w.to_string().parse::<T>().ok(), Some(w));
        }
    }

    #[test]
    fn stored_names_json_names_and_parsing_agree_for_every_word() {
        agree(&Stage::ALL);
        agree(&TaskState::ALL);
        agree(&RunState::ALL);
        agree(&Split::ALL);
        agree(&Family::ALL);
        agree(&Verdict::ALL);
        agree(&RunRoute::ALL);
    }
}
