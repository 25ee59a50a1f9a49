//! Stable colours: the same nick (or APP_ID) gets the same colour in every
//! room, every session and on every machine.

use ratatui::style::Color;

/// Colours that read well on dark and light backgrounds; black, white and
/// greys are left out because they vanish on one or the other.
const PALETTE: [Color; 14] = [
    Color::Red,
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightRed,
    Color::LightGreen,
    Color::LightYellow,
    Color::LightBlue,
    Color::LightMagenta,
    Color::LightCyan,
    Color::Indexed(208),
    Color::Indexed(141),
];

/// FNV-1a: fixed and tiny (std's hasher is seeded per process, which would
/// change colours on every start).
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The colour of a nick.
pub fn nick_color(nick: &str) -> Color {
    PALETTE[fnv1a(nick) as usize % PALETTE.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(nick_color("alice"), nick_color("alice"));
        // Pinned: a change here changes everyone's colours.
        assert_eq!(fnv1a("alice"), 0x8722_13e7);
        let nicks: Vec<String> = (0..100).map(|i| format!("user{i}")).collect();
        let mut seen: Vec<Color> = nicks.iter().map(|n| nick_color(n)).collect();
        seen.sort_by_key(|c| format!("{c:?}"));
        seen.dedup();
        assert!(seen.len() >= 10, "only {} colours used", seen.len());
    }
}
