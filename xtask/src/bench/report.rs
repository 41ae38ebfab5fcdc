//! What the benchmark found, as named measurements, and the text it prints.
//!
//! Each scenario fills its own [`Report`]; `run` appends them in order. The
//! text is built only at the end, so every figure is a typed value (a rate,
//! a latency, a ratio) until then, and one place decides how each prints.
use std::fmt::Write as _;

/// One measured value, printed as its kind prints.
#[derive(Clone, Copy, Debug)]
pub enum Cell {
    /// Events per second (connections, packets): whole numbers.
    Rate(f64),
    /// Microseconds, to a tenth.
    Micros(f64),
    /// Milliseconds, to a tenth.
    Millis(f64),
    /// A ratio against the table's baseline: `1.00x`.
    Ratio(f64),
    /// A count (failed connections).
    Count(u64),
    /// How far the rounds spread around their median: half their range,
    /// as a share of the median (`±4%`); a single round has none (`-`).
    Spread(f64),
}

impl Cell {
    fn render(self) -> String {
        match self {
            Cell::Rate(v) => format!("{v:.0}"),
            Cell::Micros(v) | Cell::Millis(v) => format!("{v:.1}"),
            Cell::Ratio(v) => format!("{v:.2}x"),
            Cell::Count(n) => n.to_string(),
            Cell::Spread(v) if v.is_nan() => "-".to_string(),
            Cell::Spread(v) => format!("±{:.0}%", v * 100.0),
        }
    }
}

/// Paths side by side: a label column, then right-aligned columns of the
/// given widths.
pub struct Table {
    label: (&'static str, usize),
    columns: Vec<(&'static str, usize)>,
    rows: Vec<(String, Vec<Cell>)>,
}

impl Table {
    /// `label` names the first column and its width; `columns` the others.
    pub fn new(label: (&'static str, usize), columns: &[(&'static str, usize)]) -> Self {
        Self {
            label,
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, label: &str, cells: Vec<Cell>) {
        assert_eq!(cells.len(), self.columns.len(), "one cell per column");
        self.rows.push((label.to_string(), cells));
    }

    fn render(&self, out: &mut String) {
        let (label, width) = self.label;
        let mut line = format!("{label:<width$}");
        for (name, w) in &self.columns {
            let _ = write!(line, " {name:>w$}");
        }
        out.push_str(&line);
        out.push('\n');
        for (label, cells) in &self.rows {
            let mut line = format!("{label:<width$}");
            for (cell, (_, w)) in cells.iter().zip(&self.columns) {
                let _ = write!(line, " {:>w$}", cell.render());
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
}

/// A goal the benchmark checks: `ratio` of one path against another must
/// reach `goal`.
pub struct Target {
    pub what: String,
    pub ratio: f64,
    pub goal: f64,
}

impl Target {
    pub fn met(&self) -> bool {
        self.ratio >= self.goal
    }
}

enum Block {
    Line(String),
    Table(Table),
    Target(Target),
}

/// The report: lines, tables and targets in the order they were added.
#[derive(Default)]
pub struct Report {
    blocks: Vec<Block>,
}

impl Report {
    pub fn line(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Line(text.into()));
    }

    pub fn table(&mut self, table: Table) {
        self.blocks.push(Block::Table(table));
    }

    pub fn target(&mut self, target: Target) {
        self.blocks.push(Block::Target(target));
    }

    /// Another scenario's findings, after these.
    pub fn append(&mut self, other: Report) {
        self.blocks.extend(other.blocks);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for block in &self.blocks {
            match block {
                Block::Line(text) => {
                    out.push_str(text);
                    out.push('\n');
                }
                Block::Table(table) => table.render(&mut out),
                Block::Target(t) => {
                    let _ = writeln!(
                        out,
                        "target {}: {} ({:.2}x)",
                        t.what,
                        if t.met() { "met" } else { "NOT met" },
                        t.ratio
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tables_lines_and_targets() {
        let mut table = Table::new(
            ("path", 8),
            &[("conn/s", 7), ("±", 5), ("vs (a)", 7), ("errors", 6)],
        );
        table.row(
            "(a) x",
            vec![
                Cell::Rate(16663.4),
                Cell::Spread(0.043),
                Cell::Ratio(1.0),
                Cell::Count(0),
            ],
        );
        table.row(
            "(b) y",
            vec![
                Cell::Rate(14457.0),
                Cell::Spread(f64::NAN),
                Cell::Ratio(0.8676),
                Cell::Count(2),
            ],
        );
        let mut report = Report::default();
        report.line("title");
        report.table(table);
        let mut more = Report::default();
        more.target(Target {
            what: "(b) >= 0.95x (a)".into(),
            ratio: 0.8676,
            goal: 0.95,
        });
        report.append(more);
        assert_eq!(
            report.render(),
            "title\n\
             path      conn/s     ±  vs (a) errors\n\
             (a) x      16663   ±4%   1.00x      0\n\
             (b) y      14457     -   0.87x      2\n\
             target (b) >= 0.95x (a): NOT met (0.87x)\n"
        );
    }
}
