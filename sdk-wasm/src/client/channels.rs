//! The channels the page asked for and what the server answered for each on the current socket:
//! plain Rust, so that the bookkeeping (canonical names, denials, a channel the answer left out)
//! is tested natively.

use livevote_protocol::Channel;
use uuid::Uuid;

use crate::state::EventState;

/// What the server said about one channel on the current socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Pending,
    Subscribed,
    Denied,
}

impl ChannelState {
    /// The spelling in the snapshot's `channels` (`ChannelState` in the TypeScript types).
    pub fn name(self) -> &'static str {
        match self {
            ChannelState::Pending => "pending",
            ChannelState::Subscribed => "subscribed",
            ChannelState::Denied => "denied",
        }
    }
}

/// The server's spelling of a channel name (lower-case hyphenated uuid), so that a name the page
/// wrote differently still matches SUBSCRIBED; a malformed name stays as written (the server
/// denies it by that name). Built without `Display`, which would link `core::fmt` machinery.
pub fn canonical_channel(name: &str) -> String {
    match name.parse::<Channel>() {
        Ok(channel) => {
            let mut canonical = String::from(channel.kind.prefix());
            canonical.push(':');
            canonical.push_str(
                channel
                    .id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()),
            );
            canonical
        }
        Err(_) => name.to_owned(),
    }
}

/// The page's channels in the order first asked for, each with the server's answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Channels {
    entries: Vec<(String, ChannelState)>,
}

impl Channels {
    /// The channels of `connect()`'s options, canonical and without repeats, all pending.
    pub fn new(names: impl IntoIterator<Item = String>) -> Channels {
        let mut channels = Channels::default();
        channels.add(names);
        channels
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, ChannelState)> {
        self.entries.iter()
    }

    pub fn state(&self, name: &str) -> Option<ChannelState> {
        let name = canonical_channel(name);
        self.entries
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, state)| *state)
    }

    /// True while some channel waits for the server's answer on the current socket.
    pub fn any_pending(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, state)| *state == ChannelState::Pending)
    }

    /// Every channel waits again (a new socket): returns them all, to be subscribed.
    pub fn all_pending(&mut self) -> Vec<String> {
        self.entries
            .iter_mut()
            .map(|(name, state)| {
                *state = ChannelState::Pending;
                name.clone()
            })
            .collect()
    }

    /// Records the server's answer for one channel; true when it changed.
    pub fn set(&mut self, name: &str, state: ChannelState) -> bool {
        let name = canonical_channel(name);
        match self.entries.iter_mut().find(|(known, _)| *known == name) {
            Some(entry) if entry.1 != state => {
                entry.1 = state;
                true
            }
            _ => false,
        }
    }

    /// SUBSCRIBED listing `subscribed`, the answer to the subscribe command that asked for
    /// `asked`. The server answers every command with one SUBSCRIBED after its denials, so a
    /// channel of that command still pending now will never be answered: it counts as denied.
    /// True when something changed.
    pub fn answered(&mut self, subscribed: &[String], asked: Vec<String>) -> bool {
        let mut changed = false;
        for name in subscribed {
            changed |= self.set(name, ChannelState::Subscribed);
        }
        for name in asked {
            if self.state(&name) == Some(ChannelState::Pending) {
                changed |= self.set(&name, ChannelState::Denied);
            }
        }
        changed
    }

    /// Adds channels (canonical, without repeats); asking again for a denied one retries it (a
    /// new token may allow it). Returns the ones to subscribe.
    pub fn add(&mut self, names: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut added = Vec::new();
        for name in names {
            let name = canonical_channel(&name);
            match self.entries.iter_mut().find(|(known, _)| *known == name) {
                Some(entry) if entry.1 == ChannelState::Denied => entry.1 = ChannelState::Pending,
                Some(_) => continue,
                None => self.entries.push((name.clone(), ChannelState::Pending)),
            }
            added.push(name);
        }
        added
    }

    /// Forgets channels; returns their canonical names, or nothing when none was held.
    pub fn remove(&mut self, names: &[String]) -> Option<Vec<String>> {
        let names: Vec<String> = names.iter().map(|name| canonical_channel(name)).collect();
        let before = self.entries.len();
        self.entries.retain(|(known, _)| !names.contains(known));
        (self.entries.len() != before).then_some(names)
    }

    /// True when a channel the client holds and was not denied carries the event.
    pub fn carry(&self, state: &EventState) -> bool {
        self.entries.iter().any(|(name, channel_state)| {
            *channel_state != ChannelState::Denied && state.is_carried_by(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAMER: &str = "streamer:a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d";
    const USER: &str = "user:9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";

    #[test]
    fn names_are_canonical_and_kept_once() {
        let channels = Channels::new([
            STREAMER.to_uppercase().replace("STREAMER", "streamer"),
            STREAMER.to_owned(),
            "not-a-channel".to_owned(),
        ]);
        let names: Vec<&str> = channels.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, [STREAMER, "not-a-channel"]);
        assert!(channels.any_pending());
    }

    #[test]
    fn a_channel_the_answer_leaves_out_is_denied() {
        let mut channels = Channels::new([STREAMER.to_owned(), USER.to_owned()]);
        let asked = channels.all_pending();
        assert!(channels.answered(&[STREAMER.to_owned()], asked));
        assert_eq!(channels.state(STREAMER), Some(ChannelState::Subscribed));
        assert_eq!(channels.state(USER), Some(ChannelState::Denied));
        assert!(!channels.any_pending());
        // Asking again for a denied channel retries it; a subscribed one is not asked twice.
        assert_eq!(channels.add([USER.to_owned(), STREAMER.to_owned()]), [USER]);
        assert_eq!(channels.state(USER), Some(ChannelState::Pending));
    }

    #[test]
    fn removing_reports_only_held_channels() {
        let mut channels = Channels::new([STREAMER.to_owned()]);
        assert_eq!(channels.remove(&[USER.to_owned()]), None);
        assert_eq!(
            channels.remove(&[STREAMER.to_uppercase().replace("STREAMER", "streamer")]),
            Some(vec![STREAMER.to_owned()])
        );
        assert_eq!(channels.iter().count(), 0);
    }
}
