//! Terminal-safe text and line wrapping by display width.
//!
//! Both the state (scroll arithmetic) and the view (drawing) wrap through
//! these functions, so the number of rows a line takes is the same number in
//! both places.
//!
//! Text is measured and cut by grapheme cluster, exactly as ratatui's
//! buffer measures it (its `CellWidth`): a flag (`🇫🇷`, two regional
//! indicators) or an emoji with a skin tone is one two-cell glyph. Counting
//! code points instead (two one-cell indicators), or cutting a row between
//! them, makes the client and the terminal disagree about where the cells
//! are, which leaves ghost glyphs behind as lines scroll.

use std::ops::Range;

use ratatui::buffer::CellWidth;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthChar;

/// Cells a character takes on screen, alone. Control characters never
/// reach the screen (see [`sanitize`]), so they count as zero here.
pub fn char_width(c: char) -> usize {
    if c.is_control() {
        return 0;
    }
    c.width().unwrap_or(0)
}

/// Cells one grapheme cluster takes on screen: the number ratatui uses.
pub fn grapheme_width(g: &str) -> usize {
    if g.chars().all(char::is_control) {
        return 0;
    }
    usize::from(g.cell_width())
}

/// Cells a string takes on screen (on one row).
pub fn str_width(s: &str) -> usize {
    s.graphemes(true).map(grapheme_width).sum()
}

/// Whether `c` is a regional indicator (half of a flag).
fn regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

/// Text as it goes into the screen's cells. A flag is two regional
/// indicators: ratatui would put it in one two-cell cell, but terminals
/// disagree about it (tmux 3.3 keeps each indicator in a cell of its own),
/// and when the flag is later overwritten ratatui rewrites only the first
/// cell: the second indicator stays behind as a ghost until Ctrl+L. A
/// zero-width space between the two (ratatui drops zero-width graphemes,
/// so it never reaches the terminal) makes them two one-cell cells that
/// are each rewritten when they change. They are still written one right
/// after the other, so terminals that draw flags still draw one, in the
/// same two cells. Measuring is unchanged: a flag is 2 cells either way.
pub fn for_cells(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(regional_indicator) {
        return s.into();
    }
    // Between every two adjacent indicators, not only within a flag:
    // otherwise the second half of one flag and the first of the next
    // would pair up into one cell.
    let mut out = String::with_capacity(s.len() + 8);
    let mut prev_ri = false;
    for c in s.chars() {
        let ri = regional_indicator(c);
        if ri && prev_ri {
            out.push('\u{200B}');
        }
        prev_ri = ri;
        out.push(c);
    }
    out.into()
}

/// Make untrusted text safe to put in terminal cells: a message that holds
/// an escape sequence must not be able to move the cursor or change colours,
/// so control characters become visible symbols. Newlines stay (they break
/// rows); tabs become four spaces so column arithmetic stays simple.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push('\n'),
            '\r' => {}
            '\t' => out.push_str("    "),
            // U+2400 block: the "control picture" of each C0 character.
            c if (c as u32) < 0x20 => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('?')),
            '\u{7f}' => out.push('\u{2421}'),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Cut `s` to at most `width` cells, ending with `…` when something was cut.
pub fn truncate(s: &str, width: usize) -> String {
    if str_width(s) <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for g in s.graphemes(true) {
        let w = grapheme_width(g);
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push_str(g);
    }
    if width > 0 {
        out.push('…');
    }
    out
}

/// Split `text` into rows: the first row is `first` cells wide, every later
/// row `rest` cells wide. Returns byte ranges into `text` (without the
/// newline characters). Rows break after white space when the row holds a
/// break opportunity, otherwise between grapheme clusters; a wide cluster
/// never straddles two rows and a cluster is never split. Every paragraph (text between newlines) takes at
/// least one row, so an empty text takes one row.
pub fn wrap(text: &str, first: usize, rest: usize) -> Vec<Range<usize>> {
    let first = first.max(1);
    let rest = rest.max(1);
    let mut rows = Vec::new();
    let mut para_start = 0;
    for para in text.split('\n') {
        wrap_paragraph(para, para_start, first, rest, &mut rows);
        para_start += para.len() + 1;
    }
    rows
}

fn wrap_paragraph(
    para: &str,
    base: usize,
    first: usize,
    rest: usize,
    rows: &mut Vec<Range<usize>>,
) {
    let cap = |rows: &Vec<Range<usize>>| if rows.is_empty() { first } else { rest };
    let mut row_start = 0;
    let mut row_width = 0;
    // The byte index just after the last white space in this row, and the
    // width of what follows it: where a soft break would go.
    let mut last_break: Option<usize> = None;
    let mut since_break = 0;
    for (i, c) in para.grapheme_indices(true) {
        let w = grapheme_width(c);
        let space = c.chars().all(char::is_whitespace);
        if space && row_width + w > cap(rows) {
            // White space where the row is full: it ends the row (drawn
            // past the edge, so invisible) rather than indenting the next.
            rows.push(base + row_start..base + i + c.len());
            row_start = i + c.len();
            row_width = 0;
            last_break = None;
            since_break = 0;
            continue;
        }
        while row_width + w > cap(rows) && row_width > 0 {
            match last_break {
                Some(b) if b > row_start => {
                    rows.push(base + row_start..base + b);
                    row_start = b;
                    row_width = since_break;
                }
                _ => {
                    rows.push(base + row_start..base + i);
                    row_start = i;
                    row_width = 0;
                    since_break = 0;
                }
            }
            last_break = None;
        }
        row_width += w;
        if space {
            last_break = Some(i + c.len());
            since_break = 0;
        } else {
            since_break += w;
        }
    }
    rows.push(base + row_start..base + para.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, first: usize, rest: usize) -> Vec<&str> {
        wrap(text, first, rest)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn short_text_is_one_row() {
        assert_eq!(rows("hello", 10, 10), vec!["hello"]);
        assert_eq!(rows("", 10, 10), vec![""]);
    }

    #[test]
    fn breaks_after_spaces() {
        assert_eq!(
            rows("the quick brown fox", 10, 10),
            vec!["the quick ", "brown fox"]
        );
    }

    #[test]
    fn first_row_may_be_narrower() {
        assert_eq!(
            rows("aaa bbb ccc ddd", 4, 8),
            vec!["aaa ", "bbb ccc ", "ddd"]
        );
    }

    #[test]
    fn a_space_at_the_edge_does_not_start_the_next_row() {
        assert_eq!(rows("abcd efgh", 4, 4), vec!["abcd ", "efgh"]);
        assert_eq!(rows("日本 語", 4, 4), vec!["日本 ", "語"]);
    }

    #[test]
    fn long_words_break_by_character() {
        assert_eq!(rows("abcdefghij", 4, 4), vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn wide_characters_never_straddle() {
        // Each of these takes two cells: three fit in 7 cells, not four.
        let text = "日本語のテキスト";
        let r = rows(text, 7, 7);
        assert_eq!(r, vec!["日本語", "のテキ", "スト"]);
        for row in &r {
            assert!(str_width(row) <= 7);
        }
    }

    #[test]
    fn a_wide_char_in_a_one_cell_row_still_makes_progress() {
        assert_eq!(rows("日本", 1, 1), vec!["日", "本"]);
    }

    #[test]
    fn flags_and_emoji_sequences_are_one_glyph_never_split() {
        // Two regional indicators make one two-cell flag, as ratatui (and
        // the terminal) draw it; four code points are not four cells.
        assert_eq!(str_width("🇫🇷"), 2);
        assert_eq!(str_width("🇫🇷🇩🇪"), 4);
        assert_eq!(str_width("👍🏽"), 2);
        // A row boundary never falls between the two halves of a flag.
        let text = "🇫🇷🇩🇪🇯🇵🇧🇷🇮🇹";
        for w in 1..12 {
            for row in rows(text, w, w) {
                assert_eq!(
                    row.chars().count() % 2,
                    0,
                    "width {w}: a row with half a flag: {row:?}"
                );
                assert!(str_width(row) <= w.max(2), "{row:?} wider than {w}");
            }
        }
        assert_eq!(rows(text, 4, 4), vec!["🇫🇷🇩🇪", "🇯🇵🇧🇷", "🇮🇹"]);
        // Cutting keeps whole clusters too.
        assert_eq!(truncate("🇫🇷🇩🇪🇯🇵", 5), "🇫🇷🇩🇪…");
    }

    #[test]
    fn flags_go_into_two_cells_of_one_indicator_each() {
        assert_eq!(for_cells("a🇫🇷🇩🇪b"), "a🇫\u{200B}🇷\u{200B}🇩\u{200B}🇪b");
        assert_eq!(for_cells("🇫"), "🇫");
        assert!(matches!(for_cells("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(str_width(&for_cells("🇫🇷🇩🇪")), str_width("🇫🇷🇩🇪"));
    }

    #[test]
    fn newlines_break_rows() {
        assert_eq!(rows("a\nb c\n\nd", 10, 10), vec!["a", "b c", "", "d"]);
    }

    #[test]
    fn sanitize_defuses_escape_sequences() {
        let s = sanitize("red\x1b[31m\tbell\x07\r\nok");
        assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s:?}");
        assert!(s.contains("    bell"));
        assert!(s.ends_with("\nok"));
    }

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("alice", 10), "alice");
        assert_eq!(truncate("bartholomew", 6), "barth…");
        assert_eq!(str_width(&truncate("日本語のテキスト", 6)), 5);
    }
}
