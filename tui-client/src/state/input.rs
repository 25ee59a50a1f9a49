//! The input line: editing by character (not byte), history, and nick
//! completion.
//!
//! The text is a `Vec<char>` and the cursor an index into it, so it never
//! lands inside a UTF-8 sequence; moving and deleting go by grapheme
//! cluster, so a flag (`🇫🇷`, two regional indicators), an emoji with
//! modifiers or `e` plus a combining accent is one step and is never cut
//! in half. How wide each cluster is on screen is the view's business.

use unicode_segmentation::UnicodeSegmentation;

/// Most lines kept in the input history.
pub const HISTORY_MAX: usize = 500;

/// An in-progress Tab completion: pressing Tab again cycles through the
/// candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Completion {
    /// Where the completed word starts.
    start: usize,
    candidates: Vec<String>,
    next: usize,
}

/// The editable input line.
#[derive(Debug, Clone, Default)]
pub struct Input {
    chars: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Which history entry is shown while browsing with ↑/↓.
    browsing: Option<usize>,
    /// What was typed before browsing started, restored by ↓ at the end.
    draft: Vec<char>,
    completion: Option<Completion>,
}

impl Input {
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The cursor as a character index.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    fn edited(&mut self) {
        self.completion = None;
    }

    pub fn insert(&mut self, c: char) {
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
        self.edited();
    }

    /// Insert pasted text: tabs become spaces, other control characters
    /// are dropped; line ends stay (a multi-line paste is sent as one
    /// multi-line message). A line end is LF, CR LF or a lone CR: many
    /// terminals (and tmux's `paste-buffer -p`) paste lines ending in CR,
    /// and dropping those would glue the lines together.
    pub fn insert_str(&mut self, s: &str) {
        let mut add = Vec::with_capacity(s.len());
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    chars.next_if_eq(&'\n');
                    add.push('\n');
                }
                '\t' => add.extend([' '; 4]),
                '\n' => add.push('\n'),
                c if c.is_control() => {}
                c => add.push(c),
            }
        }
        // One splice, not one insert per character: a big paste into the
        // middle of the line stays linear.
        let n = add.len();
        self.chars.splice(self.cursor..self.cursor, add);
        self.cursor += n;
        self.edited();
    }

    /// Character indices where grapheme clusters start, and the end.
    pub fn boundaries(&self) -> Vec<usize> {
        grapheme_starts(&self.chars)
    }

    /// The start of the cluster before the cursor.
    fn prev_boundary(&self) -> usize {
        self.boundaries()
            .into_iter()
            .rev()
            .find(|&b| b < self.cursor)
            .unwrap_or(0)
    }

    /// The end of the cluster at the cursor.
    fn next_boundary(&self) -> usize {
        self.boundaries()
            .into_iter()
            .find(|&b| b > self.cursor)
            .unwrap_or(self.chars.len())
    }

    pub fn backspace(&mut self) {
        let start = self.prev_boundary();
        self.chars.drain(start..self.cursor);
        self.cursor = start;
        self.edited();
    }

    pub fn delete(&mut self) {
        let end = self.next_boundary();
        self.chars.drain(self.cursor..end);
        self.edited();
    }

    pub fn left(&mut self) {
        self.cursor = self.prev_boundary();
        self.edited();
    }

    pub fn right(&mut self) {
        self.cursor = self.next_boundary();
        self.edited();
    }

    pub fn home(&mut self) {
        self.cursor = 0;
        self.edited();
    }

    pub fn end(&mut self) {
        self.cursor = self.chars.len();
        self.edited();
    }

    fn word_start_before(&self, mut i: usize) -> usize {
        while i > 0 && self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !self.chars[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }

    /// Move to the start of the previous word (Ctrl+← / Alt+b).
    pub fn word_left(&mut self) {
        self.cursor = self.word_start_before(self.cursor);
        self.edited();
    }

    /// Move past the end of the next word (Ctrl+→ / Alt+f).
    pub fn word_right(&mut self) {
        let n = self.chars.len();
        let mut i = self.cursor;
        while i < n && self.chars[i].is_whitespace() {
            i += 1;
        }
        while i < n && !self.chars[i].is_whitespace() {
            i += 1;
        }
        self.cursor = i;
        self.edited();
    }

    /// Delete the word before the cursor (Ctrl+W).
    pub fn delete_word_back(&mut self) {
        let start = self.word_start_before(self.cursor);
        self.chars.drain(start..self.cursor);
        self.cursor = start;
        self.edited();
    }

    /// Delete from the start of the line to the cursor (Ctrl+U).
    pub fn kill_to_start(&mut self) {
        self.chars.drain(..self.cursor);
        self.cursor = 0;
        self.edited();
    }

    /// Delete from the cursor to the end of the line (Ctrl+K).
    pub fn kill_to_end(&mut self) {
        self.chars.truncate(self.cursor);
        self.edited();
    }

    /// Take the line for sending: it goes into the history (unless it
    /// repeats the last entry) and the input is cleared.
    pub fn submit(&mut self) -> String {
        let text = self.text();
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            self.history.push(text.clone());
            if self.history.len() > HISTORY_MAX {
                self.history.remove(0);
            }
        }
        self.chars.clear();
        self.cursor = 0;
        self.browsing = None;
        self.draft.clear();
        self.edited();
        text
    }

    fn show(&mut self, chars: Vec<char>) {
        self.chars = chars;
        self.cursor = self.chars.len();
        self.completion = None;
    }

    /// ↑: the previous history entry.
    pub fn history_prev(&mut self) {
        let i = match self.browsing {
            None if self.history.is_empty() => return,
            None => {
                self.draft = self.chars.clone();
                self.history.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.browsing = Some(i);
        self.show(self.history[i].chars().collect());
    }

    /// ↓: the next history entry, then back to what was being typed.
    pub fn history_next(&mut self) {
        let Some(i) = self.browsing else { return };
        if i + 1 < self.history.len() {
            self.browsing = Some(i + 1);
            self.show(self.history[i + 1].chars().collect());
        } else {
            self.browsing = None;
            let draft = std::mem::take(&mut self.draft);
            self.show(draft);
        }
    }

    /// Tab: complete the word before the cursor from `names` (case does not
    /// matter); Tab again cycles. A nick completed at the start of the line
    /// gets `: ` after it, as in IRC clients; a `/command` gets a space
    /// (`/join: ` would not be a command). Returns false when nothing
    /// matched.
    pub fn complete<'a>(&mut self, names: impl Iterator<Item = &'a str>) -> bool {
        let comp = match self.completion.take() {
            Some(c) => c,
            None => {
                let start = self.word_start_before(self.cursor);
                if start == self.cursor || self.chars[self.cursor - 1].is_whitespace() {
                    return false;
                }
                let prefix: String = self.chars[start..self.cursor].iter().collect();
                let prefix = prefix.to_lowercase();
                let mut candidates: Vec<String> = names
                    .filter(|n| n.to_lowercase().starts_with(&prefix))
                    .map(str::to_string)
                    .collect();
                candidates.sort_by_key(|n| n.to_lowercase());
                candidates.dedup();
                if candidates.is_empty() {
                    return false;
                }
                Completion {
                    start,
                    candidates,
                    next: 0,
                }
            }
        };
        let word = &comp.candidates[comp.next % comp.candidates.len()];
        let suffix = if comp.start == 0 && !word.starts_with('/') {
            ": "
        } else {
            " "
        };
        let replacement: Vec<char> = word.chars().chain(suffix.chars()).collect();
        self.chars
            .splice(comp.start..self.cursor, replacement.iter().copied());
        self.cursor = comp.start + replacement.len();
        self.completion = Some(Completion {
            next: comp.next + 1,
            ..comp
        });
        true
    }
}

/// Character indices where the grapheme clusters of `chars` start, then
/// `chars.len()`.
pub fn grapheme_starts(chars: &[char]) -> Vec<usize> {
    let text: String = chars.iter().collect();
    let mut out = Vec::with_capacity(chars.len() + 1);
    let mut i = 0;
    for g in text.graphemes(true) {
        out.push(i);
        i += g.chars().count();
    }
    out.push(chars.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Input {
        let mut i = Input::default();
        i.insert_str(s);
        i
    }

    #[test]
    fn edits_by_character_not_byte() {
        let mut i = typed("héllo 日本");
        assert_eq!(i.cursor(), 8);
        i.left();
        i.left();
        i.backspace(); // the space
        assert_eq!(i.text(), "héllo日本");
        i.home();
        i.right();
        i.delete(); // é
        assert_eq!(i.text(), "hllo日本");
        i.end();
        i.insert('語');
        assert_eq!(i.text(), "hllo日本語");
        // Nothing here panics at the ends.
        i.delete();
        i.home();
        i.backspace();
        i.left();
        assert_eq!(i.cursor(), 0);
    }

    #[test]
    fn words() {
        let mut i = typed("one two  three");
        i.word_left();
        assert_eq!(i.cursor(), 9);
        i.word_left();
        assert_eq!(i.cursor(), 4);
        i.word_right();
        assert_eq!(i.cursor(), 7);
        i.end();
        i.delete_word_back();
        assert_eq!(i.text(), "one two  ");
        i.word_left();
        i.kill_to_end();
        assert_eq!(i.text(), "one ");
        i.kill_to_start();
        assert!(i.is_empty());
    }

    #[test]
    fn history_browses_and_restores_the_draft() {
        let mut i = Input::default();
        for s in ["first", "second", "second", "  "] {
            i.insert_str(s);
            i.submit();
        }
        i.insert_str("draft");
        i.history_prev();
        assert_eq!(i.text(), "second", "repeats and blank lines are not kept");
        i.history_prev();
        assert_eq!(i.text(), "first");
        i.history_prev();
        assert_eq!(i.text(), "first");
        i.history_next();
        assert_eq!(i.text(), "second");
        i.history_next();
        assert_eq!(i.text(), "draft");
        assert_eq!(i.cursor(), 5);
    }

    #[test]
    fn history_is_bounded() {
        let mut i = Input::default();
        for n in 0..HISTORY_MAX + 10 {
            i.insert_str(&n.to_string());
            i.submit();
        }
        assert_eq!(i.history.len(), HISTORY_MAX);
    }

    #[test]
    fn paste_goes_in_at_the_cursor() {
        let mut i = typed("ad");
        i.left();
        i.insert_str("bc");
        assert_eq!((i.text().as_str(), i.cursor()), ("abcd", 3));
    }

    #[test]
    fn paste_keeps_newlines_and_drops_controls() {
        let i = typed("a\tb\r\nc\x1b[31m");
        assert_eq!(i.text(), "a    b\nc[31m");
    }

    #[test]
    fn a_paste_with_cr_line_ends_keeps_its_lines_apart() {
        // tmux `paste-buffer -p` and many terminals end pasted lines in CR.
        let i = typed("pasted line one\rpasted line two\r");
        assert_eq!(i.text(), "pasted line one\npasted line two\n");
        let i = typed("one\r\ntwo\n\rthree");
        assert_eq!(i.text(), "one\ntwo\n\nthree");
    }

    #[test]
    fn moving_and_deleting_go_by_grapheme_cluster() {
        // A flag is two regional indicators; é here is e + U+0301.
        let mut i = typed("a🇫🇷e\u{301}👍🏽");
        assert_eq!(i.chars().len(), 7);
        i.left();
        assert_eq!(i.cursor(), 5, "the emoji and its skin tone are one step");
        i.left();
        assert_eq!(i.cursor(), 3);
        i.left();
        assert_eq!(i.cursor(), 1, "the flag is one step");
        i.delete();
        assert_eq!(i.text(), "ae\u{301}👍🏽", "the whole flag goes");
        i.end();
        i.backspace();
        assert_eq!(i.text(), "ae\u{301}");
        i.backspace();
        assert_eq!(i.text(), "a");
        assert_eq!(grapheme_starts(&[]), vec![0]);
    }

    #[test]
    fn a_completed_command_gets_a_space_not_a_colon() {
        let names = ["/join", "/who"];
        let mut i = typed("/jo");
        assert!(i.complete(names.iter().copied()));
        assert_eq!(i.text(), "/join ");
    }

    #[test]
    fn tab_completes_and_cycles() {
        let names = ["alice", "Alfred", "bob"];
        let mut i = typed("al");
        assert!(i.complete(names.iter().copied()));
        assert_eq!(i.text(), "Alfred: ");
        assert!(i.complete(names.iter().copied()));
        assert_eq!(i.text(), "alice: ");
        let mut j = typed("hi b");
        assert!(j.complete(names.iter().copied()));
        assert_eq!(j.text(), "hi bob ");
        let mut k = typed("zz");
        assert!(!k.complete(names.iter().copied()));
        assert_eq!(k.text(), "zz");
    }
}
