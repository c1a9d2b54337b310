//! Problems found in a config file, rendered as `file:line:col`, the offending line with the
//! value underlined, and a hint.

use std::{fmt, ops::Range, sync::Arc};

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity,
};

/// One problem, located in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// What is wrong, as a sentence without a final period.
    pub message: String,
    /// Byte range of the offending value, when there is one.
    pub span: Option<Range<usize>>,
    /// Short text under the underline.
    pub label: String,
    /// How to fix it, when there is something useful to say.
    pub help: Option<String>,
    /// Errors stop `check` and `run`; warnings only stop `check --deny-warnings`.
    pub severity: ProblemSeverity,
}

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemSeverity {
    /// The config cannot be used.
    Error,
    /// Probably a mistake, but the config works.
    Warning,
}

impl Problem {
    /// An error at `span`.
    pub fn error(message: impl Into<String>, span: Range<usize>, label: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            span: Some(span),
            label: label.into(),
            help: None,
            severity: ProblemSeverity::Error,
        }
    }

    /// A warning at `span`.
    pub fn warning(
        message: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> Self {
        Problem {
            severity: ProblemSeverity::Warning,
            ..Problem::error(message, span, label)
        }
    }

    /// Adds a hint.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == ProblemSeverity::Error
    }
}

/// Problems in one file, with the text they point into.
#[derive(Debug, Clone)]
pub struct Report {
    source: Arc<NamedSource<String>>,
    /// Every problem found, errors and warnings, in file order.
    pub problems: Vec<Problem>,
}

impl Report {
    /// A report on `text`, shown as `name` (usually the file path).
    pub fn new(name: &str, text: &str, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
        Report {
            source: Arc::new(NamedSource::new(name, text.to_owned())),
            problems,
        }
    }

    /// How many problems are errors.
    pub fn error_count(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
    }

    /// How many problems are warnings.
    pub fn warning_count(&self) -> usize {
        self.problems.len() - self.error_count()
    }

    /// Renders every problem: `file:line:col`, the line, the underline, the hint. No colours
    /// unless `color`.
    pub fn render(&self, color: bool) -> String {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(120)
            .with_links(false);
        let mut out = String::new();
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let shown = Shown {
                problem,
                source: &self.source,
            };
            // Writing into a String cannot fail.
            let _ = handler.render_report(&mut out, &shown);
        }
        out
    }

    /// `file:line:col` of a byte offset, 1-based, for plain-text summaries.
    pub fn location(&self, offset: usize) -> String {
        let text = self.source.inner();
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        format!("{}:{line}:{col}", self.source.name())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} error{}, {} warning{}",
            self.source.name(),
            self.error_count(),
            if self.error_count() == 1 { "" } else { "s" },
            self.warning_count(),
            if self.warning_count() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Report {}

struct Shown<'a> {
    problem: &'a Problem,
    source: &'a Arc<NamedSource<String>>,
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shown")
            .field("problem", self.problem)
            .finish()
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for Shown<'_> {}

impl Diagnostic for Shown<'_> {
    fn severity(&self) -> Option<Severity> {
        Some(match self.problem.severity {
            ProblemSeverity::Error => Severity::Error,
            ProblemSeverity::Warning => Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.problem
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.problem
            .span
            .as_ref()
            .map(|_| self.source.as_ref() as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.problem.span.clone()?;
        let label = LabeledSpan::new_primary_with_span(Some(self.problem.label.clone()), span);
        Some(Box::new(std::iter::once(label)))
    }
}

/// Edit distance, for "did you mean" hints.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The closest candidate within a small edit distance.
pub(crate) fn closest<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (levenshtein(wanted, c), c))
        .filter(|(d, c)| *d <= (wanted.len().max(c.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based_line_and_column() {
        let report = Report::new("c.toml", "a = 1\nbb = 2\n", vec![]);
        assert_eq!(report.location(0), "c.toml:1:1");
        assert_eq!(report.location(9), "c.toml:2:4");
    }

    #[test]
    fn closest_finds_a_near_typo_and_ignores_strangers() {
        assert_eq!(
            closest("press1.part_total", ["press1.parts_total", "press1.state"]),
            Some("press1.parts_total")
        );
        assert_eq!(closest("oven", ["press1.parts_total"]), None);
    }
}
