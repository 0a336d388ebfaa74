//! A plain-text table for terminals: left-aligned columns that fit a width, cells cut with
//! `…`, and the short forms of times its cells use. Used by `queue list`; knows nothing of
//! queues.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

/// One line of at most `width` characters: control characters (CR, LF, tabs of multi-line
/// replies) become spaces, runs of spaces collapse, invisible format characters (bidi
/// overrides, zero-width marks) are shown escaped as `queue show` shows them, and a cut is
/// marked with `…`.
pub fn truncate(text: &str, width: usize) -> String {
    let mut flat = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (flat.is_empty() || flat.ends_with(' ')) {
            continue;
        }
        flat.push(c);
    }
    let flat = crate::wire::header::terminal_safe(flat.trim_end());
    if flat.chars().count() <= width {
        return flat.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = flat.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// One column of [`render_table`]: cells longer than `max` are cut; when the line is too
/// long for the width, the column may shrink down to `min`.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    pub title: &'a str,
    pub min: usize,
    pub max: usize,
}

impl<'a> Column<'a> {
    pub fn new(title: &'a str, min: usize, max: usize) -> Self {
        Column { title, min, max }
    }

    /// Never cut or shrunk.
    pub fn fixed(title: &'a str) -> Self {
        Column::new(title, usize::MAX, usize::MAX)
    }
}

/// A left-aligned table, columns two spaces apart, lines at most `width` characters where
/// possible. The last column takes what is left: to give it up to its `min`, the other
/// columns shrink (widest first, not below their `min`); it never gets less than 16. No
/// trailing spaces.
pub fn render_table(columns: &[Column], rows: &[Vec<String>], width: usize) -> String {
    const GAP: usize = 2;
    const MIN_LAST: usize = 16;
    let n = columns.len();
    let mut cells: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    cells.push(columns.iter().map(|c| c.title.to_string()).collect());
    for row in rows {
        let mut r: Vec<String> = row
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, c)| truncate(c, columns[i].max))
            .collect();
        r.resize(n, String::new());
        cells.push(r);
    }
    let mut widths = vec![0usize; n];
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    if n > 0 {
        let last = n - 1;
        let wanted = widths[last].min(columns[last].min);
        let used = |widths: &[usize]| -> usize { widths[..last].iter().map(|w| w + GAP).sum() };
        while width.saturating_sub(used(&widths)) < wanted {
            let shrinkable = (0..last)
                .filter(|&i| widths[i] > columns[i].min.max(columns[i].title.chars().count()))
                .max_by_key(|&i| widths[i]);
            match shrinkable {
                Some(i) => widths[i] -= 1,
                None => break,
            }
        }
        widths[last] = widths[last].min(width.saturating_sub(used(&widths)).max(MIN_LAST));
    }
    let mut text = String::new();
    for r in &cells {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let c = truncate(c, widths[i]);
            if i + 1 < n {
                let pad = widths[i] - c.chars().count() + GAP;
                let _ = write!(line, "{c}{:pad$}", "");
            } else {
                line.push_str(&c);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A duration in the largest two units that matter: `45s`, `4m`, `2h05m`, `3d04h`.
pub fn format_duration(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    if secs < MIN {
        format!("{secs}s")
    } else if secs < HOUR {
        format!("{}m", secs / MIN)
    } else if secs < DAY {
        format!("{}h{:02}m", secs / HOUR, secs % HOUR / MIN)
    } else {
        format!("{}d{:02}h", secs / DAY, secs % DAY / HOUR)
    }
}

/// When the next attempt is, relative to now: `due` or `in 4m`.
pub fn format_next(now: u64, next_attempt: u64) -> String {
    if next_attempt <= now {
        "due".into()
    } else {
        format!("in {}", format_duration(next_attempt - now))
    }
}

/// An absolute time for `show`: HTTP date plus how long ago / how far ahead.
pub fn format_time(now: u64, t: u64) -> String {
    let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t));
    if t <= now {
        format!("{date} ({} ago)", format_duration(now - t))
    } else {
        format!("{date} (in {})", format_duration(t - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_format_characters_escaped() {
        // U+202E would reverse the rest of the line; ESC would start a terminal sequence.
        assert_eq!(
            truncate("a\u{202e}gpj.exe@x\u{1b}[2J", 40),
            "a\\u{202e}gpj.exe@x [2J"
        );
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("longer than ten", 10), "longer th…");
        assert_eq!(truncate("anything", 0), "");
        assert_eq!(truncate("anything", 1), "…");
        // Multi-line replies become one line.
        assert_eq!(
            truncate("451 4.7.500\r\n  try later\t", 40),
            "451 4.7.500 try later"
        );
        // Counts characters, not bytes.
        assert_eq!(truncate("ääääää", 4), "äää…");
    }

    #[test]
    fn table_fits_the_width() {
        let rows = vec![
            vec!["a".into(), "x".repeat(50), "a long error ".repeat(20)],
            vec!["bb".into(), "y".into(), "short".into()],
        ];
        let cols = [
            Column::fixed("ID"),
            Column::new("MID", 8, 20),
            Column::new("ERR", 30, usize::MAX),
        ];
        // Wide enough: MID is only cut at its max.
        let text = render_table(&cols, &rows, 80);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "ID  MID                   ERR");
        for l in &lines {
            assert!(l.chars().count() <= 80, "{l:?}");
            assert_eq!(l.trim_end(), *l, "no trailing spaces");
        }
        assert!(lines[1].starts_with("a   xxxxxxxxxxxxxxxxxxx…  a long error"));
        assert!(lines[1].ends_with('…'));
        assert_eq!(lines[2], "bb  y                     short");
        // Narrower: MID gives way (down to its min) so ERR gets its 30.
        let text = render_table(&cols, &rows, 46);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row,
            format!(
                "a   xxxxxxxxx…  {}…",
                "a long error ".repeat(3).get(..29).unwrap()
            )
        );
        assert_eq!(row.chars().count(), 46);
        // Very narrow: everything at its min, ERR still shows 16 characters.
        let narrow = render_table(&cols, &rows, 10);
        assert!(narrow
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("  a long error a …"));
        // Unlimited: nothing is cut.
        let text = render_table(&cols, &rows, usize::MAX);
        assert!(text.contains(&"a long error ".repeat(20).trim_end().to_string()));
    }
}
