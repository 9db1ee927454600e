//! Plain text to PDF: the printable sibling of each HTML letter and of the regulator summary.
//!
//! The text is what a `.txt` template rendered: a line starting with `# ` is a heading, a line
//! starting with `- ` or `* ` a bullet, blank lines separate paragraphs, and every other line
//! is printed as a line of its own (addresses and time lines keep their shape). Lines are
//! wrapped to the page width by the font's own glyph widths, and pages are added as needed,
//! each numbered `n / N` at the foot.
//!
//! Invariants:
//! - **No font files, no HTML renderer.** The text is set in Helvetica, one of the standard
//!   Type 1 fonts every PDF reader has, with the WinAnsi encoding (Windows-1252): nothing is
//!   embedded, so the file holds the text, the layout and nothing else.
//! - **Readable by a test and a person alike.** Content streams are not compressed; each
//!   printed line is one text string (ASCII as a literal string, anything else as hex).
//! - **Characters outside WinAnsi are replaced**, never dropped silently: a letter with an
//!   accent that WinAnsi lacks is printed as its base letter (`ő` as `o`, `Ł` has none), and
//!   anything else (Greek, Cyrillic, CJK, emoji) as `?`. Latin-1 letters (`é`, `ñ`, `ü`, `ß`)
//!   and the typographic quotes, dashes, `€` and `•` are in WinAnsi and print as themselves.
//!   Operators writing to patients in other scripts use the HTML letter.
//! - **No PHI in the metadata.** The document information names the producer only; the
//!   catalog carries the letter's language.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use unicode_normalization::UnicodeNormalization;

/// A4, in points.
const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const MARGIN_LEFT: f32 = 64.0;
const MARGIN_RIGHT: f32 = 64.0;
const MARGIN_TOP: f32 = 72.0;
const MARGIN_BOTTOM: f32 = 64.0;
const BODY_SIZE: f32 = 11.0;
const BODY_LEADING: f32 = 15.0;
const HEADING_SIZE: f32 = 14.0;
const HEADING_LEADING: f32 = 20.0;
const PARAGRAPH_GAP: f32 = 8.0;
const FOOTER_SIZE: f32 = 9.0;
const BULLET_INDENT: f32 = 14.0;

/// The glyph widths of Helvetica (Adobe's AFM, thousandths of the font size) for WinAnsi
/// codes 32 to 255; the codes WinAnsi leaves undefined print as the bullet's width.
#[rustfmt::skip]
const HELVETICA_WIDTHS: [u16; 224] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // 0x20
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, // 0x30
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, // 0x40
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, // 0x50
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, // 0x60
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, 350, // 0x70
    556, 350, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 350, 611, 350, // 0x80
    350, 222, 222, 333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 350, 500, 667, // 0x90
    278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333, // 0xA0
    400, 584, 333, 333, 333, 556, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611, // 0xB0
    667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278, // 0xC0
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611, // 0xD0
    556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278, // 0xE0
    556, 556, 556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500, // 0xF0
];

/// The WinAnsi (Windows-1252) code of `c`, if it has one.
fn winansi(c: char) -> Option<u8> {
    let code = u32::from(c);
    if (0x20..=0x7e).contains(&code) || (0xa0..=0xff).contains(&code) {
        return u8::try_from(code).ok();
    }
    Some(match c {
        '€' => 0x80,
        '‚' => 0x82,
        'ƒ' => 0x83,
        '„' => 0x84,
        '…' => 0x85,
        '†' => 0x86,
        '‡' => 0x87,
        'ˆ' => 0x88,
        '‰' => 0x89,
        'Š' => 0x8a,
        '‹' => 0x8b,
        'Œ' => 0x8c,
        'Ž' => 0x8e,
        '\u{2018}' => 0x91,
        '\u{2019}' => 0x92,
        '\u{201c}' => 0x93,
        '\u{201d}' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '˜' => 0x98,
        '™' => 0x99,
        'š' => 0x9a,
        '›' => 0x9b,
        'œ' => 0x9c,
        'ž' => 0x9e,
        'Ÿ' => 0x9f,
        _ => return None,
    })
}

/// `text` in WinAnsi: each character as itself, else as its base letter (the first
/// character of its canonical decomposition, when that one is in WinAnsi), else `?`. Tabs
/// and other spaces print as a space, hyphens and minus signs as `-`.
pub(super) fn encode(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| {
            winansi(c).unwrap_or_else(|| match c {
                '\t' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}' => b' ',
                '\u{2010}' | '\u{2011}' | '\u{2212}' => b'-',
                _ => c.nfd().next().and_then(winansi).unwrap_or(b'?'),
            })
        })
        .collect()
}

/// The width of WinAnsi `bytes` in Helvetica at `size`, in points.
fn width(bytes: &[u8], size: f32) -> f32 {
    let units: u32 = bytes
        .iter()
        .map(|&b| {
            usize::from(b)
                .checked_sub(32)
                .and_then(|i| HELVETICA_WIDTHS.get(i))
                .map_or(0, |&w| u32::from(w))
        })
        .sum();
    // At most a few thousand units per line: exact in f32.
    units as f32 * size / 1000.0
}

/// `line` (WinAnsi) broken into lines no wider than `max` points at `size`: at spaces, and
/// inside a word only when the word alone is wider than a line.
pub(super) fn wrap(line: &[u8], size: f32, max: f32) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for word in line.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let candidate_width = if current.is_empty() {
            width(word, size)
        } else {
            width(&current, size) + width(b" ", size) + width(word, size)
        };
        if candidate_width <= max {
            if !current.is_empty() {
                current.push(b' ');
            }
            current.extend_from_slice(word);
            continue;
        }
        if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        // The word alone: split it where it overflows.
        for &b in word {
            if !current.is_empty() && width(&current, size) + width(&[b], size) > max {
                out.push(std::mem::take(&mut current));
            }
            current.push(b);
        }
    }
    if !current.is_empty() || out.is_empty() {
        out.push(current);
    }
    out
}

/// One line placed on a page.
#[derive(Debug, Clone, PartialEq)]
struct Placed {
    x: f32,
    y: f32,
    size: f32,
    text: Vec<u8>,
}

/// What the layout produces, before pages.
#[derive(Debug)]
enum Block {
    /// Lines of one source line, with their size, leading and left indent of each.
    Lines {
        lines: Vec<(f32, Vec<u8>)>,
        size: f32,
        leading: f32,
        space_before: f32,
    },
    /// A paragraph break.
    Gap,
}

/// The source text as blocks.
fn blocks(text: &str) -> Vec<Block> {
    let usable = PAGE_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            if !matches!(out.last(), None | Some(Block::Gap)) {
                out.push(Block::Gap);
            }
            continue;
        }
        if let Some(heading) = line.strip_prefix("# ") {
            let lines = wrap(&encode(heading.trim()), HEADING_SIZE, usable)
                .into_iter()
                .map(|l| (0.0, l))
                .collect();
            out.push(Block::Lines {
                lines,
                size: HEADING_SIZE,
                leading: HEADING_LEADING,
                space_before: 6.0,
            });
        } else if let Some(item) = line.strip_prefix("- ").or_else(|| line.strip_prefix("* ")) {
            let mut lines: Vec<(f32, Vec<u8>)> = Vec::new();
            for (i, l) in wrap(&encode(item.trim()), BODY_SIZE, usable - BULLET_INDENT)
                .into_iter()
                .enumerate()
            {
                if i == 0 {
                    lines.push((0.0, vec![0x95]));
                }
                lines.push((BULLET_INDENT, l));
            }
            out.push(Block::Lines {
                lines,
                size: BODY_SIZE,
                leading: BODY_LEADING,
                space_before: 0.0,
            });
        } else {
            let lines = wrap(&encode(line), BODY_SIZE, usable)
                .into_iter()
                .map(|l| (0.0, l))
                .collect();
            out.push(Block::Lines {
                lines,
                size: BODY_SIZE,
                leading: BODY_LEADING,
                space_before: 0.0,
            });
        }
    }
    out
}

/// The blocks placed on pages (at least one page).
fn paginate(blocks: &[Block]) -> Vec<Vec<Placed>> {
    let top = PAGE_HEIGHT - MARGIN_TOP;
    let mut pages: Vec<Vec<Placed>> = vec![Vec::new()];
    let mut y = top;
    for block in blocks {
        match block {
            Block::Gap => {
                if y < top {
                    y -= PARAGRAPH_GAP;
                }
            }
            Block::Lines {
                lines,
                size,
                leading,
                space_before,
            } => {
                if y < top {
                    y -= space_before;
                }
                // A heading keeps two lines of what follows with it.
                let keep = if *size > BODY_SIZE {
                    *leading + 2.0 * BODY_LEADING + PARAGRAPH_GAP
                } else {
                    0.0
                };
                if y < top && y - keep < MARGIN_BOTTOM {
                    pages.push(Vec::new());
                    y = top;
                }
                for (x, text) in lines {
                    // A bullet shares its first line's baseline.
                    let same_line = *x > 0.0
                        && pages
                            .last()
                            .and_then(|p| p.last())
                            .is_some_and(|p| p.text == [0x95] && p.y == y);
                    if !same_line {
                        if y - leading < MARGIN_BOTTOM {
                            pages.push(Vec::new());
                            y = top;
                        }
                        y -= leading;
                    }
                    if let Some(page) = pages.last_mut() {
                        page.push(Placed {
                            x: MARGIN_LEFT + x,
                            y,
                            size: *size,
                            text: text.clone(),
                        });
                    }
                }
            }
        }
    }
    pages
}

/// `text` as a PDF (see the module docs); `language` (BCP 47) goes into the catalog.
pub(super) fn render(text: &str, language: Option<&str>) -> Vec<u8> {
    let pages = paginate(&blocks(text));
    let mut pdf = Pdf::new();
    let catalog_id = Ref::new(1);
    let tree_id = Ref::new(2);
    let font_id = Ref::new(3);
    let info_id = Ref::new(4);
    let font = Name(b"F1");
    // Two objects per page from 5 on; a page count that overflows i32 cannot be laid out.
    let page_ids: Vec<(Ref, Ref)> = (0..pages.len())
        .map(|i| {
            let n = i32::try_from(i).unwrap_or(i32::MAX / 2 - 3);
            (Ref::new(5 + 2 * n), Ref::new(6 + 2 * n))
        })
        .collect();

    let mut catalog = pdf.catalog(catalog_id);
    catalog.pages(tree_id);
    if let Some(lang) = language {
        catalog.lang(TextStr(lang));
    }
    catalog.finish();
    pdf.pages(tree_id)
        .kids(page_ids.iter().map(|(p, _)| *p))
        .count(i32::try_from(pages.len()).unwrap_or(i32::MAX));
    pdf.type1_font(font_id)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.document_info(info_id).producer(TextStr("phivault"));

    let total = pages.len();
    for (i, (lines, (page_id, content_id))) in pages.iter().zip(&page_ids).enumerate() {
        let mut page = pdf.page(*page_id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT));
        page.parent(tree_id);
        page.contents(*content_id);
        page.resources().fonts().pair(font, font_id);
        page.finish();

        let mut content = Content::new();
        for line in lines {
            content.begin_text();
            content.set_font(font, line.size);
            content.set_text_matrix([1.0, 0.0, 0.0, 1.0, line.x, line.y]);
            content.show(Str(&line.text));
            content.end_text();
        }
        let footer = format!("{} / {total}", i + 1);
        let footer_x = (PAGE_WIDTH - width(footer.as_bytes(), FOOTER_SIZE)) / 2.0;
        content.begin_text();
        content.set_font(font, FOOTER_SIZE);
        content.set_text_matrix([1.0, 0.0, 0.0, 1.0, footer_x, MARGIN_BOTTOM / 2.0]);
        content.show(Str(footer.as_bytes()));
        content.end_text();
        let data = content.finish();
        pdf.stream(*content_id, &data);
    }
    pdf.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn latin1_prints_as_itself_and_the_rest_is_replaced() {
        assert_eq!(encode("Núñez Müller"), b"N\xfa\xf1ez M\xfcller");
        assert_eq!(encode("é ß À"), b"\xe9 \xdf \xc0");
        assert_eq!(encode("€ “a” – •"), b"\x80 \x93a\x94 \x96 \x95");
        assert_eq!(encode("Őz Śl"), b"Oz Sl", "base letters");
        assert_eq!(encode("Łódź"), b"?\xf3dz");
        assert_eq!(encode("Ωμ 漢 🙂"), b"?? ? ?");
        assert_eq!(encode("a\tb\u{2212}c"), b"a b-c");
    }

    #[test]
    fn widths_are_helvetica() {
        assert_eq!(width(b"Hello", 1000.0), 2278.0);
        assert_eq!(width(b"\xe9", 10.0), 5.56);
        assert_eq!(HELVETICA_WIDTHS.len(), 256 - 32);
    }

    #[test]
    fn lines_wrap_at_spaces_to_the_width() {
        let line = encode("the quick brown fox jumps over the lazy dog");
        let max = width(b"the quick brown fox", 10.0);
        let lines = wrap(&line, 10.0, max);
        let text: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8(l.clone()).unwrap())
            .collect();
        assert_eq!(text, ["the quick brown fox", "jumps over the lazy", "dog"]);
        assert!(lines.iter().all(|l| width(l, 10.0) <= max));
        // A word longer than a line is cut; nothing is lost.
        let long = wrap(&[b'm'; 40], 10.0, width(&[b'm'; 10], 10.0));
        assert_eq!(long.len(), 4);
        assert_eq!(long.concat(), vec![b'm'; 40]);
        assert_eq!(wrap(b"", 10.0, 100.0), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn long_text_flows_onto_new_pages() {
        let text = "# Title\n\n".to_owned() + &"A line of the letter.\n".repeat(120);
        let pages = paginate(&blocks(&text));
        assert!(pages.len() >= 3, "{}", pages.len());
        for page in &pages {
            assert!(
                page.iter()
                    .all(|l| l.y >= MARGIN_BOTTOM && l.y <= PAGE_HEIGHT)
            );
        }
        let pdf = render(&text, Some("en"));
        assert!(pdf.starts_with(b"%PDF-"));
        let count = pdf.windows(11).filter(|w| w == b"/Type /Page").count();
        // `/Type /Pages` once, `/Type /Page` once per page.
        assert_eq!(count, pages.len() + 1);
    }

    #[test]
    fn bullets_hang_and_headings_are_larger() {
        let b = blocks("# Head\n- first item\nplain");
        let pages = paginate(&b);
        let lines = &pages[0];
        assert_eq!(lines[0].size, HEADING_SIZE);
        assert_eq!(lines[1].text, [0x95]);
        assert_eq!(lines[2].text, b"first item");
        assert_eq!(lines[1].y, lines[2].y);
        assert_eq!(lines[2].x, MARGIN_LEFT + BULLET_INDENT);
        assert_eq!(lines[3].x, MARGIN_LEFT);
    }

    #[test]
    fn a_heading_is_not_left_alone_at_the_foot_of_a_page() {
        // Body lines up to just above the foot, then a heading: it moves to the next page.
        let usable = PAGE_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
        let fill = (usable / BODY_LEADING) as usize - 2;
        let text = "line\n".repeat(fill) + "# Heading\nbody\n";
        let pages = paginate(&blocks(&text));
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[1][0].text, b"Heading");
    }
}
