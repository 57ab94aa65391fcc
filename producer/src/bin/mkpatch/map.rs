//! `mkpatch inspect --map FILE`: the change map as an SVG image, the same
//! picture the page (wasm/www/app.js, `drawMap`) draws on its canvas, from
//! the same buckets (`anypatch_apply::layout::map`, filled by `inspect`).
//!
//! 4096 cells in reading order, 128 to a row, each 6 pixels square (5 and a
//! gap); a cell is as many bytes of the new image as it takes. A cell is
//! grey where it is all unchanged; else painted over in the colour of its
//! most common changed kind (moved, data, zeros), more opaque the more of
//! the cell changed, so any change shows, however small. A legend with
//! each kind's bytes, share and extents is under the grid.

use std::fmt::Write as _;

use anypatch_apply::layout::map::{Buckets, DATA, KINDS, MOVED, UNCHANGED, ZERO};
use anypatch_safe_output::human_bytes;

/// Cells in the picture, as on the page.
pub(crate) const BUCKETS: usize = 4096;
/// Cells in a row.
const COLUMNS: usize = 128;
/// A cell's side in pixels, the gap included.
const CELL: usize = 6;
/// Height of a legend line, in pixels.
const LINE: usize = 20;

/// The page's colours (wasm/www/style.css) and legend labels, by kind index.
const KIND_STYLE: [(&str, &str); KINDS] = {
    let mut k = [("", ""); KINDS];
    k[UNCHANGED] = ("#d8dde4", "unchanged (copied from the same place)");
    k[MOVED] = ("#2563eb", "moved (copied from elsewhere in the old image)");
    k[DATA] = ("#ea580c", "changed (new data in the patch)");
    k[ZERO] = ("#1f2937", "zeroed");
    k
};

/// The SVG's width and height in pixels for `cells` cells.
pub(crate) fn size(cells: usize) -> (usize, usize) {
    let rows = cells.div_ceil(COLUMNS).max(1);
    (COLUMNS * CELL, rows * CELL + LINE * (KINDS + 2))
}

/// The picture of `map` as a standalone SVG document; `pages` is the
/// patch's number of manifest pages, for the scale line.
pub(crate) fn svg(map: &Buckets, pages: u64) -> String {
    let cells = map.cells();
    let (width, height) = size(cells.len());
    let grid = cells.len().div_ceil(COLUMNS).max(1) * CELL;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" shape-rendering="crispEdges" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        s,
        "<title>anypatch change map: {} of new image</title>",
        human_bytes(map.new_len())
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let side = CELL - 1;
    for (b, v) in cells.iter().enumerate() {
        let total: u64 = v.iter().sum();
        if total == 0 {
            continue;
        }
        let (x, y) = ((b % COLUMNS) * CELL, (b / COLUMNS) * CELL);
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{y}" width="{side}" height="{side}" fill="{}"/>"#,
            KIND_STYLE[UNCHANGED].0
        );
        let changed = total - v[UNCHANGED];
        if changed > 0 {
            // The most common changed kind; moved wins ties, as on the page.
            let k = [DATA, ZERO]
                .into_iter()
                .fold(MOVED, |k, j| if v[j] > v[k] { j } else { k });
            let opacity = 0.45 + 0.55 * changed as f64 / total as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{y}" width="{side}" height="{side}" fill="{}" fill-opacity="{opacity:.3}"/>"#,
                KIND_STYLE[k].0
            );
        }
    }
    let per_cell = map.new_len().div_ceil(cells.len().max(1) as u64);
    let plural = if pages == 1 { "" } else { "s" };
    let mut y = grid + LINE;
    let _ = writeln!(
        s,
        r##"<text x="0" y="{}" fill="#4b5563">{} cells in reading order, left to right and top to bottom; each cell is {} of the new image ({pages} manifest page{plural}).</text>"##,
        y - 5,
        cells.len(),
        human_bytes(per_cell),
    );
    for (k, (colour, label)) in KIND_STYLE.iter().enumerate() {
        y += LINE;
        let pct = if map.new_len() == 0 {
            0.0
        } else {
            100.0 * map.totals[k] as f64 / map.new_len() as f64
        };
        let n = map.counts[k];
        let _ = writeln!(
            s,
            r#"<rect x="0" y="{}" width="12" height="12" fill="{colour}"/><text x="18" y="{}">{label}: {} ({pct:.2}%) in {n} extent{}</text>"#,
            y - 15,
            y - 5,
            human_bytes(map.totals[k]),
            if n == 1 { "" } else { "s" },
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cell that is mostly data but partly moved is painted data; an
    /// all-unchanged cell only grey; the document is as large as it says.
    #[test]
    fn cells_take_their_main_changed_kind() {
        let mut map = Buckets::new(2, 200);
        map.add(0, 100, UNCHANGED);
        map.add(100, 10, MOVED);
        map.add(110, 90, DATA);
        let svg = svg(&map, 1);
        assert!(
            svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" width="768" height="126""#)
        );
        assert_eq!(
            svg.matches(r##"fill="#d8dde4"/>"##).count(),
            3,
            "2 cells + the legend"
        );
        assert!(svg
            .contains(r##"x="6" y="0" width="5" height="5" fill="#ea580c" fill-opacity="1.000""##));
        assert!(!svg.contains(r##"x="0" y="0" width="5" height="5" fill="#ea580c""##));
        assert!(svg.contains("changed (new data in the patch): 90 bytes (45.00%) in 1 extent<"));
    }
}
