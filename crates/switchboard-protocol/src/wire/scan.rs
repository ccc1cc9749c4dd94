//! One serde pass over a command object that records each known field *without* judging its
//! type yet: strings (borrowed when unescaped), non-negative integers, booleans and `null` are
//! kept, anything else becomes [`Scalar::Other`]; `data` is kept as raw JSON and `since` as its
//! two fields. The command parser then checks only the fields its `type` uses, so an error
//! names the exact field, fields a command does not use are ignored whatever they hold, and no
//! `serde_json::Value` or second parse is needed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A field value as read, its type not yet checked.
#[derive(Debug)]
pub(super) enum Scalar<'a> {
    /// `null`.
    Null,
    /// A string.
    Str(Cow<'a, str>),
    /// An integer from 0 to `u64::MAX`, written without fraction or exponent.
    U64(u64),
    /// `true` or `false`.
    Bool(bool),
    /// Anything else: a negative or fractional number, an array, an object.
    Other,
}

/// The value of `since` as read.
#[derive(Debug)]
pub(super) enum Since<'a> {
    /// `null`.
    Null,
    /// Not an object (and not `null`).
    NotObject,
    /// An object; its `epoch` and `offset`, if present, and a repeated one.
    Object {
        epoch: Option<Scalar<'a>>,
        offset: Option<Scalar<'a>>,
        duplicate: Option<&'static str>,
    },
}

/// The command fields the scan knows, in the order of [`CommandFields::scalars`]. `data` and
/// `since` are kept apart.
pub(super) const SCALAR_FIELDS: [&str; 11] = [
    "type",
    "id",
    "room",
    "token",
    "echo",
    "ephemeral",
    "idempotency_key",
    "cursor",
    "limit",
    "reverse",
    "method",
];

// The scalar command fields, by index in `SCALAR_FIELDS`.
pub(super) const TYPE: usize = 0;
pub(super) const ID: usize = 1;
pub(super) const ROOM: usize = 2;
pub(super) const TOKEN: usize = 3;
pub(super) const ECHO: usize = 4;
pub(super) const EPHEMERAL: usize = 5;
pub(super) const IDEMPOTENCY_KEY: usize = 6;
pub(super) const CURSOR: usize = 7;
pub(super) const LIMIT: usize = 8;
pub(super) const REVERSE: usize = 9;
pub(super) const METHOD: usize = 10;

/// Not a scalar: `data`.
pub(super) const DATA_FIELD: usize = SCALAR_FIELDS.len();
/// Not a scalar: `since`.
pub(super) const SINCE_FIELD: usize = SCALAR_FIELDS.len() + 1;

/// The known fields of a command object.
#[derive(Debug, Default)]
pub(super) struct CommandFields<'a> {
    /// By index in [`SCALAR_FIELDS`].
    pub(super) scalars: [Option<Scalar<'a>>; SCALAR_FIELDS.len()],
    /// `data`, verbatim.
    pub(super) data: Option<&'a RawValue>,
    /// `since`.
    pub(super) since: Option<Since<'a>>,
    /// The first known field that appeared twice (the first occurrence is kept).
    pub(super) duplicate: Option<&'static str>,
}

impl<'a> CommandFields<'a> {
    /// Reads `text`, which must be one JSON object and nothing else. On an error, the fields
    /// read before it stay. The only error of category `data` is "not an object" at the top
    /// level; any other is a syntax (or end of input) error.
    pub(super) fn scan(&mut self, text: &'a str) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        (&mut de).deserialize_map(CommandVisitor(self))?;
        de.end()
    }
}

struct CommandVisitor<'r, 'a>(&'r mut CommandFields<'a>);

impl<'de> Visitor<'de> for CommandVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = self.0;
        while let Some(key) = map.next_key_seed(CommandKey)? {
            let seen = match key {
                None => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Some(DATA_FIELD) => {
                    let value: &'de RawValue = map.next_value()?;
                    fields.data.replace(value).is_some()
                }
                Some(SINCE_FIELD) => {
                    let value = map.next_value_seed(SinceSeed)?;
                    fields.since.replace(value).is_some()
                }
                Some(i) => {
                    let value = map.next_value_seed(ScalarSeed)?;
                    fields.scalars[i].replace(value).is_some()
                }
            };
            if seen && fields.duplicate.is_none() {
                fields.duplicate = key.map(|i| match i {
                    DATA_FIELD => "data",
                    SINCE_FIELD => "since",
                    i => SCALAR_FIELDS[i],
                });
            }
        }
        Ok(())
    }
}

/// Deserializes a command's key into its index in [`SCALAR_FIELDS`], [`DATA_FIELD`] or
/// [`SINCE_FIELD`] (`None`: a field the parser does not know). Keys are compared, never
/// copied, even when they contain escapes.
struct CommandKey;

impl<'de> DeserializeSeed<'de> for CommandKey {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for CommandKey {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        // A `match` compiles to a switch on length and bytes (checked against SCALAR_FIELDS
        // by a test).
        Ok(Some(match key {
            "type" => TYPE,
            "id" => ID,
            "room" => ROOM,
            "token" => TOKEN,
            "echo" => ECHO,
            "ephemeral" => EPHEMERAL,
            "idempotency_key" => IDEMPOTENCY_KEY,
            "cursor" => CURSOR,
            "limit" => LIMIT,
            "reverse" => REVERSE,
            "method" => METHOD,
            "data" => DATA_FIELD,
            "since" => SINCE_FIELD,
            _ => return Ok(None),
        }))
    }
}

/// Deserializes an object key into its index in a list of names (`None`: not in it). Keys
/// are compared, never copied, even when they contain escapes.
struct KeySeed<const N: usize>(&'static [&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for KeySeed<N> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<const N: usize> Visitor<'_> for KeySeed<N> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|name| *name == key))
    }
}

/// Reads any JSON value as a [`Scalar`].
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Scalar<'de>, D::Error> {
        de.deserialize_any(self)
    }
}

/// The key serde_json uses to pass numbers as strings when its `arbitrary_precision` feature
/// is on (features are unified across a build, so another crate could turn it on).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::U64(n))
    }

    // serde_json calls `visit_i64` only for negative integers (and `-0`).
    fn visit_i64<E>(self, _: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    // Fractions, exponents and integers beyond `u64`.
    fn visit_f64<E>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        const TOKEN: [&str; 1] = [NUMBER_TOKEN];
        let mut scalar = Scalar::Other;
        if let Some(key) = map.next_key_seed(KeySeed(&TOKEN))? {
            if key.is_some() {
                let digits: Cow<'de, str> = map.next_value()?;
                scalar = parse_u64(&digits).map_or(Scalar::Other, Scalar::U64);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        }
        Ok(scalar)
    }
}

/// A non-negative integer written with digits only (no sign, fraction or exponent).
fn parse_u64(text: &str) -> Option<u64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// Reads `since`: `null`, an object (its `epoch` and `offset`), or anything else.
struct SinceSeed;

impl<'de> DeserializeSeed<'de> for SinceSeed {
    type Value = Since<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Since<'de>, D::Error> {
        match de.deserialize_any(SinceVisitor)? {
            Some(since) => Ok(since),
            None => Ok(Since::NotObject),
        }
    }
}

/// Produces `None` for anything but an object or `null` (consumed and dropped).
struct SinceVisitor;

impl<'de> Visitor<'de> for SinceVisitor {
    type Value = Option<Since<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Since::Null))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const NAMES: [&str; 3] = ["epoch", "offset", NUMBER_TOKEN];
        const DUPLICATE: [&str; 2] = ["since.epoch", "since.offset"];
        let (mut epoch, mut offset, mut duplicate) = (None, None, None);
        while let Some(key) = map.next_key_seed(KeySeed(&NAMES))? {
            let slot = match key {
                Some(0) => &mut epoch,
                Some(1) => &mut offset,
                // An arbitrary-precision number, or an unknown field.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    if key.is_some() {
                        return Ok(None);
                    }
                    continue;
                }
            };
            if slot.replace(map.next_value_seed(ScalarSeed)?).is_some() && duplicate.is_none() {
                duplicate = key.map(|i| DUPLICATE[i]);
            }
        }
        Ok(Some(Since::Object {
            epoch,
            offset,
            duplicate,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_keys_match_the_field_list() {
        let key = |name: &str| CommandKey.visit_str::<serde_json::Error>(name).unwrap();
        for (i, name) in SCALAR_FIELDS.iter().enumerate() {
            assert_eq!(key(name), Some(i), "{name}");
        }
        assert_eq!(key("data"), Some(DATA_FIELD));
        assert_eq!(key("since"), Some(SINCE_FIELD));
        assert_eq!(key("Type"), None);
        assert_eq!(key("types"), None);
    }
}
