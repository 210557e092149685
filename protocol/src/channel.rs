//! Channel names (`streamer:<uuid>`, `game:<uuid>`, `user:<uuid>`), parsed and validated.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// What a channel carries: a streamer's events, a game's events, or one user's balance and notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    /// `streamer:<uuid>`: events whose `streamerId` is the uuid; open to every token.
    Streamer,
    /// `game:<uuid>`: events whose `gameId` is the uuid; open to every token.
    Game,
    /// `user:<uuid>`: that user's BALANCE_UPDATED and notices; only for the user itself
    /// (the token's `sub`) and admins.
    User,
}

impl ChannelKind {
    /// The name's part before `:`: `"streamer"`, `"game"` or `"user"`.
    pub fn prefix(self) -> &'static str {
        match self {
            ChannelKind::Streamer => "streamer",
            ChannelKind::Game => "game",
            ChannelKind::User => "user",
        }
    }
}

/// A validated channel name. Its `Display` and serde form is the canonical `kind:<uuid>`
/// (lower-case hyphenated uuid), so two spellings of one channel compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel {
    /// What the channel carries, the name's part before `:`.
    pub kind: ChannelKind,
    /// The streamer's, game's or user's uuid, the name's part after `:`.
    pub id: Uuid,
}

impl Channel {
    /// `streamer:<id>`, carrying the events of streamer `id`.
    pub fn streamer(id: Uuid) -> Self {
        Channel {
            kind: ChannelKind::Streamer,
            id,
        }
    }
    /// `game:<id>`, carrying the events of game `id`.
    pub fn game(id: Uuid) -> Self {
        Channel {
            kind: ChannelKind::Game,
            id,
        }
    }
    /// `user:<id>`, carrying user `id`'s balance and notices.
    pub fn user(id: Uuid) -> Self {
        Channel {
            kind: ChannelKind::User,
            id,
        }
    }
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// Not of the form `kind:id`, or longer than any valid name.
    Malformed,
    /// The part before `:` is not `streamer`, `game` or `user`.
    UnknownKind,
    /// The part after `:` is not a uuid.
    InvalidId,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ChannelError::Malformed => "channel must look like kind:<uuid>",
            ChannelError::UnknownKind => "channel kind must be streamer, game or user",
            ChannelError::InvalidId => "channel id must be a uuid",
        })
    }
}

impl std::error::Error for ChannelError {}

impl FromStr for Channel {
    type Err = ChannelError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // The longest valid name is "streamer:" + a 45-character braced urn uuid; anything much
        // longer is refused before parsing so hostile input costs nothing.
        if text.len() > 64 {
            return Err(ChannelError::Malformed);
        }
        let (kind, id) = text.split_once(':').ok_or(ChannelError::Malformed)?;
        let kind = match kind {
            "streamer" => ChannelKind::Streamer,
            "game" => ChannelKind::Game,
            "user" => ChannelKind::User,
            _ => return Err(ChannelError::UnknownKind),
        };
        let id = Uuid::try_parse(id).map_err(|_| ChannelError::InvalidId)?;
        Ok(Channel { kind, id })
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.kind.prefix(), self.id.hyphenated())
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_prints_canonically() {
        let id = "6F9619FF-8B86-D011-B42D-00CF4FC964FF";
        for (name, kind) in [
            ("streamer", ChannelKind::Streamer),
            ("game", ChannelKind::Game),
            ("user", ChannelKind::User),
        ] {
            let channel: Channel = format!("{name}:{id}").parse().unwrap();
            assert_eq!(channel.kind, kind);
            assert_eq!(channel.to_string(), format!("{name}:{}", id.to_lowercase()));
        }
    }

    #[test]
    fn refuses_malformed_names() {
        assert_eq!("streamer".parse::<Channel>(), Err(ChannelError::Malformed));
        assert_eq!(
            "room:6f9619ff-8b86-d011-b42d-00cf4fc964ff".parse::<Channel>(),
            Err(ChannelError::UnknownKind)
        );
        assert_eq!("user:42".parse::<Channel>(), Err(ChannelError::InvalidId));
        assert_eq!("user:".parse::<Channel>(), Err(ChannelError::InvalidId));
        assert_eq!(
            "x".repeat(10_000).parse::<Channel>(),
            Err(ChannelError::Malformed)
        );
    }
}
