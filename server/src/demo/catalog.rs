//! What the demo's simulated worker puts on screen: the demo streamer, a few games with
//! believable prompts for a game stream, and the named demo users the viewer page offers.

use uuid::{uuid, Uuid};

/// The streamer every demo event belongs to (also the default of the worker example, so that
/// its events appear on the demo overlay).
pub const STREAMER_ID: Uuid = uuid!("5f1c0a4e-7d1b-4c39-9a55-3d2f6c8e9b10");

/// The user the overlay connects as: a viewer token that only reads.
pub const OVERLAY_USER_ID: Uuid = uuid!("0ae71a70-0000-4000-8000-000000000001");

/// The admin that credits balances and the worker that creates events.
pub const ADMIN_USER_ID: Uuid = uuid!("ad310000-0000-4000-8000-000000000001");
pub const WORKER_USER_ID: Uuid = uuid!("30130000-0000-4000-8000-000000000001");

/// A demo user offered by the viewer page.
#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    pub name: &'static str,
    pub id: Uuid,
}

pub const DEMO_USERS: [DemoUser; 6] = [
    DemoUser {
        name: "PixelPanda",
        id: uuid!("de300000-0000-4000-8000-000000000001"),
    },
    DemoUser {
        name: "SpeedrunSam",
        id: uuid!("de300000-0000-4000-8000-000000000002"),
    },
    DemoUser {
        name: "LootGoblin",
        id: uuid!("de300000-0000-4000-8000-000000000003"),
    },
    DemoUser {
        name: "CozyCarla",
        id: uuid!("de300000-0000-4000-8000-000000000004"),
    },
    DemoUser {
        name: "ClutchKate",
        id: uuid!("de300000-0000-4000-8000-000000000005"),
    },
    DemoUser {
        name: "NoScopeNico",
        id: uuid!("de300000-0000-4000-8000-000000000006"),
    },
];

/// The balance the demo tops named users and simulated viewers up to.
pub const DEMO_BALANCE: i64 = 5_000;

/// The id of the simulated viewer number `index` (stable across restarts, so that their
/// balances carry over in the same database).
pub fn simulated_viewer_id(index: usize) -> Uuid {
    Uuid::from_u128(uuid!("51a00000-0000-4000-8000-000000000000").as_u128() | index as u128)
}

/// One question the worker can ask: a title and its answers as (id, label).
#[derive(Debug, Clone, Copy)]
pub struct Prompt {
    pub title: &'static str,
    pub options: &'static [(&'static str, &'static str)],
}

/// A game being streamed, with the prompts that fit it.
#[derive(Debug, Clone, Copy)]
pub struct Game {
    pub name: &'static str,
    pub id: Uuid,
    pub prompt_version: &'static str,
    pub prompts: &'static [Prompt],
}

pub const GAMES: [Game; 4] = [
    Game {
        name: "Hollowfell",
        id: uuid!("6a3e0000-0000-4000-8000-000000000001"),
        prompt_version: "v3",
        prompts: &[
            Prompt {
                title: "Does the Ashen Warden go down on this attempt?",
                options: &[
                    ("first-try", "First try!"),
                    ("two-tries", "Takes two more"),
                    ("rage-quit", "Rage quit incoming"),
                ],
            },
            Prompt {
                title: "Which weapon for the Sunken Crypt?",
                options: &[
                    ("greatsword", "Greatsword"),
                    ("twin-daggers", "Twin daggers"),
                    ("fire-staff", "Fire staff"),
                    ("bare-fists", "Bare fists"),
                ],
            },
            Prompt {
                title: "Deaths before the next bonfire?",
                options: &[
                    ("zero", "None"),
                    ("one-two", "1–2"),
                    ("three-five", "3–5"),
                    ("six-plus", "6 or more"),
                ],
            },
        ],
    },
    Game {
        name: "Neon Circuit",
        id: uuid!("6a3e0000-0000-4000-8000-000000000002"),
        prompt_version: "v5",
        prompts: &[
            Prompt {
                title: "Where does this race finish?",
                options: &[
                    ("win", "Win"),
                    ("podium", "Podium"),
                    ("top-ten", "Top 10"),
                    ("crash", "Crashes out"),
                ],
            },
            Prompt {
                title: "Which car for the night race?",
                options: &[
                    ("viper", "Viper GT"),
                    ("ronin", "Ronin R8"),
                    ("mule", "The old Mule"),
                ],
            },
            Prompt {
                title: "Clean lap or wall kiss on the hairpin?",
                options: &[("clean", "Clean lap"), ("kiss", "Wall kiss")],
            },
        ],
    },
    Game {
        name: "Skyforge",
        id: uuid!("6a3e0000-0000-4000-8000-000000000003"),
        prompt_version: "v2",
        prompts: &[
            Prompt {
                title: "What do we build next?",
                options: &[
                    ("castle", "Castle"),
                    ("farm", "Farm"),
                    ("coaster", "Rollercoaster"),
                    ("bunker", "Secret bunker"),
                ],
            },
            Prompt {
                title: "Survive the first blood moon?",
                options: &[("easy", "Easily"), ("barely", "Barely"), ("nope", "Nope")],
            },
            Prompt {
                title: "Name the new pet fox",
                options: &[
                    ("ember", "Ember"),
                    ("biscuit", "Biscuit"),
                    ("sir-fluff", "Sir Fluffington"),
                    ("todd", "Todd"),
                ],
            },
        ],
    },
    Game {
        name: "Tactical Ops",
        id: uuid!("6a3e0000-0000-4000-8000-000000000004"),
        prompt_version: "v7",
        prompts: &[
            Prompt {
                title: "Clutch the 1v3?",
                options: &[
                    ("clutch", "Clutch it"),
                    ("trade", "Trade one"),
                    ("lose", "Lose it"),
                ],
            },
            Prompt {
                title: "Who tops the scoreboard this map?",
                options: &[
                    ("streamer", "The streamer"),
                    ("duo", "The duo partner"),
                    ("random", "The random"),
                ],
            },
            Prompt {
                title: "Next round buy?",
                options: &[("full", "Full buy"), ("eco", "Eco"), ("force", "Force buy")],
            },
        ],
    },
];

/// The costs per vote the worker picks from.
pub const COSTS_PER_VOTE: [u64; 4] = [10, 25, 50, 100];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_the_event_rules() {
        for game in GAMES {
            for prompt in game.prompts {
                assert!(
                    (1..=200).contains(&prompt.title.chars().count()),
                    "{}",
                    prompt.title
                );
                assert!((2..=10).contains(&prompt.options.len()), "{}", prompt.title);
                let mut ids: Vec<&str> = prompt.options.iter().map(|(id, _)| *id).collect();
                ids.sort_unstable();
                ids.dedup();
                assert_eq!(
                    ids.len(),
                    prompt.options.len(),
                    "duplicate option id in {}",
                    prompt.title
                );
                for (id, label) in prompt.options {
                    assert!(!id.is_empty() && id.len() <= 64);
                    assert!((1..=100).contains(&label.chars().count()));
                }
            }
        }
    }

    #[test]
    fn simulated_viewers_are_distinct_from_named_users() {
        let viewer = simulated_viewer_id(1);
        assert!(DEMO_USERS.iter().all(|user| user.id != viewer));
        assert_ne!(simulated_viewer_id(1), simulated_viewer_id(2));
    }
}
