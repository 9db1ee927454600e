//! The operator's templates (`--template DIR`, a copy of the repository's `templates/breach/`)
//! and the choice of a letter's language.
//!
//! Rules:
//! - **Complete or refused, before the store is opened.** `letter.html`, `letter.txt`,
//!   `regulator-summary.html` and `regulator-summary.txt` must exist; a language variant
//!   (`letter.<lang>.html`) must come with its text sibling (`letter.<lang>.txt`, from which
//!   the PDF is made), so a patient's HTML and PDF letters are always in one language. Every
//!   template is compiled at load, so a syntax error is reported (file and line) before
//!   anything is read or written. Other files in the directory are ignored.
//! - **HTML is escaped.** Templates whose name ends in `.html` autoescape every value (a
//!   patient named `<script>` prints as text); `.txt` templates print values as they are.
//! - **Mistakes in a template fail, not print nothing.** An undefined variable used in
//!   output is an error (it may still be tested with `{% if %}`). Templates reach nothing
//!   but the values they are given: no file system loader, and `include`/`extends` see only
//!   the templates of the directory.
//! - **No values in errors.** The engine is built without its debug feature (which prints
//!   the values in scope), so a rendering error names the template, the line and what went
//!   wrong in terms of kinds of values, never a patient's text.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

/// The stem of the letter templates.
const LETTER: &str = "letter";
/// The stem of the regulator summary templates.
pub(super) const SUMMARY: &str = "regulator-summary";
/// Largest template file.
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// The two templates of one document: HTML and the text the PDF is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pair {
    /// The language of the templates (`es`, `en-us`, lower case), `None` for the default
    /// `letter.html`.
    pub(super) language: Option<String>,
    pub(super) html: String,
    pub(super) txt: String,
}

/// The loaded, compiled templates.
pub(super) struct Templates {
    env: Environment<'static>,
    /// Letter pairs by language (lower case); the default is not in here.
    letters: BTreeMap<String, Pair>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("languages", &self.letters.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Whether `tag` can be a BCP 47 language tag (letters, digits and hyphens, 1 to 35).
fn plausible_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 35
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.starts_with('-')
        && !tag.ends_with('-')
}

/// The kind of template a file name is: `(stem, language, extension)`.
fn classify(name: &str) -> Option<(&str, Option<&str>, &str)> {
    let (rest, ext) = name.rsplit_once('.')?;
    if !matches!(ext, "html" | "txt") {
        return None;
    }
    if rest == LETTER || rest == SUMMARY {
        return Some((rest, None, ext));
    }
    let tag = rest.strip_prefix("letter.")?;
    plausible_tag(tag).then_some((LETTER, Some(tag), ext))
}

/// The languages to try for a patient's language `tag`, best first: the whole tag, then its
/// primary subtag (lower case; `_` read as `-`).
pub(super) fn candidates(tag: Option<&str>) -> Vec<String> {
    let Some(tag) = tag.map(|t| t.trim().replace('_', "-").to_ascii_lowercase()) else {
        return Vec::new();
    };
    if !plausible_tag(&tag) {
        return Vec::new();
    }
    let mut out = vec![tag.clone()];
    if let Some((primary, _)) = tag.split_once('-')
        && !primary.is_empty()
    {
        out.push(primary.to_owned());
    }
    out
}

impl Templates {
    /// Reads and compiles the templates of `dir`.
    pub(super) fn load(dir: &Path) -> Result<Templates> {
        let hint = "copy templates/breach/ of the phivault sources and edit the copy";
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("--template {} ({hint})", dir.display()))?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        // A block tag on its own line leaves no blank line behind (the text templates are
        // laid out line by line).
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow!("the template syntax: {e}"))?,
        );
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // (language, extension) -> file name, for the letter variants.
        let mut variants: BTreeMap<(String, &'static str), String> = BTreeMap::new();
        let mut found: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("--template {}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((stem, language, ext)) = classify(&name) else {
                continue;
            };
            let path = entry.path();
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("--template: {}", path.display()))?;
            if !meta.is_file() {
                continue;
            }
            if meta.len() > MAX_TEMPLATE_BYTES {
                bail!("--template: {} is larger than 1 MiB", path.display());
            }
            let source = std::fs::read_to_string(&path)
                .with_context(|| format!("--template: reading {}", path.display()))?;
            env.add_template_owned(name.clone(), source)
                .map_err(|e| anyhow!("--template: {}: {e}", path.display()))?;
            if let (LETTER, Some(tag)) = (stem, language) {
                let ext = if ext == "html" { "html" } else { "txt" };
                if let Some(other) = variants.insert((tag.to_ascii_lowercase(), ext), name.clone())
                {
                    bail!(
                        "--template {}: {other} and {name} are the same language",
                        dir.display()
                    );
                }
            }
            found.push(name);
        }
        for required in [
            format!("{LETTER}.html"),
            format!("{LETTER}.txt"),
            format!("{SUMMARY}.html"),
            format!("{SUMMARY}.txt"),
        ] {
            if !found.contains(&required) {
                bail!(
                    "--template {}: {required} is missing ({hint})",
                    dir.display()
                );
            }
        }
        let mut letters = BTreeMap::new();
        for ((tag, ext), name) in &variants {
            let other = if *ext == "html" { "txt" } else { "html" };
            let Some(sibling) = variants.get(&(tag.clone(), other)) else {
                bail!(
                    "--template {}: {name} has no letter.{tag}.{other} beside it (a language \
                     needs both: the PDF is made from the .txt)",
                    dir.display()
                );
            };
            let (html, txt) = if *ext == "html" {
                (name.clone(), sibling.clone())
            } else {
                (sibling.clone(), name.clone())
            };
            letters.insert(
                tag.clone(),
                Pair {
                    language: Some(tag.clone()),
                    html,
                    txt,
                },
            );
        }
        Ok(Templates { env, letters })
    }

    /// The letter templates for a patient whose language is `tag` (BCP 47, any case):
    /// `letter.<tag>`, else `letter.<primary subtag>`, else `letter`.
    pub(super) fn letter_for(&self, tag: Option<&str>) -> Pair {
        candidates(tag)
            .iter()
            .find_map(|t| self.letters.get(t).cloned())
            .unwrap_or_else(|| Pair {
                language: None,
                html: format!("{LETTER}.html"),
                txt: format!("{LETTER}.txt"),
            })
    }

    /// The regulator summary templates.
    pub(super) fn summary(&self) -> Pair {
        Pair {
            language: None,
            html: format!("{SUMMARY}.html"),
            txt: format!("{SUMMARY}.txt"),
        }
    }

    /// Renders the template `name` with `context`. The error names the template and its
    /// line, never a value.
    pub(super) fn render(&self, name: &str, context: &Value) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| anyhow!("template {name}: {e}"))?;
        template
            .render(context)
            .map_err(|e| anyhow!("template {name}: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const BASE: [(&str, &str); 4] = [
        ("letter.html", "<p>{{ patient.name }}</p>"),
        ("letter.txt", "{{ patient.name }}"),
        ("regulator-summary.html", "s"),
        ("regulator-summary.txt", "s"),
    ];

    #[test]
    fn the_language_is_chosen_whole_tag_then_primary_then_default() {
        let mut files = BASE.to_vec();
        files.extend([
            ("letter.es.html", "es"),
            ("letter.es.txt", "es"),
            ("letter.pt-BR.html", "pt-BR"),
            ("letter.pt-BR.txt", "pt-BR"),
            ("README.md", "ignored"),
        ]);
        let dir = dir_with(&files);
        let t = Templates::load(dir.path()).unwrap();
        let pick = |tag: Option<&str>| t.letter_for(tag).html;
        assert_eq!(pick(Some("es")), "letter.es.html");
        assert_eq!(pick(Some("es-MX")), "letter.es.html");
        assert_eq!(pick(Some("ES_mx")), "letter.es.html");
        assert_eq!(pick(Some("pt-BR")), "letter.pt-BR.html");
        assert_eq!(pick(Some("pt-br")), "letter.pt-BR.html");
        assert_eq!(pick(Some("pt")), "letter.html", "pt-BR is not pt");
        assert_eq!(pick(Some("de")), "letter.html");
        assert_eq!(pick(Some("../es")), "letter.html");
        assert_eq!(pick(None), "letter.html");
        assert_eq!(t.letter_for(Some("es-MX")).language.as_deref(), Some("es"));
        assert_eq!(t.letter_for(Some("es-MX")).txt, "letter.es.txt");
    }

    #[test]
    fn candidates_are_the_tag_then_its_primary_subtag() {
        assert_eq!(candidates(Some("en-US")), ["en-us", "en"]);
        assert_eq!(candidates(Some("de")), ["de"]);
        assert!(candidates(Some("")).is_empty());
        assert!(candidates(Some("e s")).is_empty());
        assert!(candidates(None).is_empty());
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let dir = dir_with(&BASE);
        let t = Templates::load(dir.path()).unwrap();
        let ctx = minijinja::context! { patient => minijinja::context! { name => "<b>A&B</b>" } };
        assert_eq!(
            t.render("letter.html", &ctx).unwrap(),
            "<p>&lt;b&gt;A&amp;B&lt;&#x2f;b&gt;</p>"
        );
        assert_eq!(t.render("letter.txt", &ctx).unwrap(), "<b>A&B</b>");
        let e = t
            .render("letter.txt", &minijinja::context! {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("letter.txt"), "{e}");
    }

    #[test]
    fn missing_or_broken_templates_are_named() {
        for missing in BASE.map(|(n, _)| n) {
            let files: Vec<_> = BASE
                .iter()
                .copied()
                .filter(|(n, _)| *n != missing)
                .collect();
            let dir = dir_with(&files);
            let e = Templates::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(missing) && e.contains("missing"), "{e}");
        }
        let mut files = BASE.to_vec();
        files.push(("letter.de.html", "de"));
        let e = Templates::load(dir_with(&files).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("letter.de.txt"), "{e}");
        let mut files = BASE.to_vec();
        files[0] = ("letter.html", "{% if %}");
        let e = Templates::load(dir_with(&files).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("letter.html"), "{e}");
        let e = Templates::load(Path::new("/nonexistent/breach"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/breach"), "{e}");
    }
}
