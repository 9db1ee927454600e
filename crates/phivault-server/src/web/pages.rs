//! The page templates (`templates/web/`, embedded at build time) and the values each expects.
//!
//! Rules:
//! - **Every value is escaped.** Every template is `.html`, rendered with HTML autoescaping:
//!   an app named `<script>` prints as text. Values are never marked safe.
//! - **A mistake fails, not prints nothing.** Undefined values are errors (strict mode); the
//!   optional ones are tested with `is defined` in the templates, and the typed views below
//!   always define every value.
//! - **No values in errors or logs.** The engine has no debug feature (a rendering error
//!   names the template and line, never a value in scope); the views carry tokens and
//!   patient names and have no `Debug`.
//! - Templates are compiled when [`Pages`] is built, so a broken template stops the server at
//!   start-up, not at a patient's sign-in.

use std::fmt;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use super::scopes::ScopeItem;
use super::{WebError, page};

/// The templates: name and source.
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "layout.html",
        include_str!("../../templates/web/layout.html"),
    ),
    (
        "signin.html",
        include_str!("../../templates/web/signin.html"),
    ),
    ("totp.html", include_str!("../../templates/web/totp.html")),
    (
        "picker.html",
        include_str!("../../templates/web/picker.html"),
    ),
    (
        "consent.html",
        include_str!("../../templates/web/consent.html"),
    ),
    ("error.html", include_str!("../../templates/web/error.html")),
];

/// What a failed rendering answers: the page itself could not be made.
const FALLBACK: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>Something went wrong · phivault</title>\n\
<link rel=\"stylesheet\" href=\"/static/phivault.css\">\n</head>\n<body>\n\
<main id=\"main\" class=\"page\">\n<section class=\"card\">\n<h1>Something went wrong</h1>\n\
<p>This page could not be shown. Please try again later.</p>\n</section>\n</main>\n</body>\n\
</html>\n";

/// The compiled templates; cheap to clone (shared).
#[derive(Clone)]
pub struct Pages {
    env: Arc<Environment<'static>>,
}

impl fmt::Debug for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field(
                "templates",
                &TEMPLATES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A page's values, and the template that shows them.
pub(crate) trait View: Serialize {
    /// The template's name (`signin.html`).
    const TEMPLATE: &'static str;
}

impl Pages {
    /// Compiles the embedded templates.
    pub(crate) fn new() -> Result<Pages, WebError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // A block tag on its own line leaves no blank line behind.
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()?,
        );
        // The sign-in pages' templates, then each area's (account, portal, console), each
        // listed by the module that serves it.
        let areas: [&[(&str, &str)]; 6] = [
            TEMPLATES,
            crate::routes::account::TEMPLATES,
            crate::routes::portal::TEMPLATES,
            crate::routes::console::TEMPLATES,
            crate::routes::console::people::TEMPLATES,
            crate::routes::console::system::TEMPLATES,
        ];
        for (name, source) in areas.into_iter().flatten() {
            env.add_template(name, source)?;
        }
        Ok(Pages { env: Arc::new(env) })
    }

    /// The HTML of `view`.
    pub(crate) fn render<V: View>(&self, view: &V) -> Result<String, WebError> {
        self.render_template(V::TEMPLATE, view)
    }

    /// The HTML of the template `name` with the values of `context` (for pages without a
    /// typed view; prefer [`Pages::render`]).
    pub(crate) fn render_template<S: Serialize>(
        &self,
        name: &str,
        context: S,
    ) -> Result<String, WebError> {
        Ok(self.env.get_template(name)?.render(Serde(context))?)
    }

    /// The response of `view`, through [`page`] (its headers, and a `form-action` for each of
    /// `form_targets`). A rendering failure is logged (template and line, no values) and
    /// answers a plain 500 page.
    pub(crate) fn respond<V: View>(
        &self,
        status: StatusCode,
        view: &V,
        form_targets: &[&str],
    ) -> Response {
        match self.render(view) {
            Ok(html) => page(status, html, form_targets),
            Err(error) => {
                tracing::error!(template = V::TEMPLATE, %error, "a page could not be rendered");
                page(StatusCode::INTERNAL_SERVER_ERROR, FALLBACK.to_owned(), &[])
            }
        }
    }
}

impl Pages {
    /// The response of the template `name` with the values of `context` (pages of the portal
    /// and console, whose values are built where they are served), through [`page`]. A
    /// rendering failure is logged (template and line, no values) and answers a plain 500
    /// page.
    pub(crate) fn respond_template<S: Serialize>(
        &self,
        status: StatusCode,
        name: &str,
        context: S,
        form_targets: &[&str],
    ) -> Response {
        match self.render_template(name, context) {
            Ok(html) => page(status, html, form_targets),
            Err(error) => {
                tracing::error!(template = name, %error, "a page could not be rendered");
                page(StatusCode::INTERNAL_SERVER_ERROR, FALLBACK.to_owned(), &[])
            }
        }
    }
}

/// `signin.html`: the sign-in step of an authorization request. Posts `username`,
/// `password`, `csrf` and `request` to `/oauth/authorize/signin`.
#[derive(Serialize)]
pub(crate) struct SigninView<'a> {
    /// The app's name, shown; empty for the portal's and console's sign-in.
    pub(crate) client_name: &'a str,
    /// Where the form posts.
    pub(crate) action: &'a str,
    /// The name of the hidden field carrying `request` (`request`, or `next`).
    pub(crate) carry: &'a str,
    /// The anti-forgery token ([`super::csrf::ensure`]).
    pub(crate) csrf: &'a str,
    /// The pending authorization request's handle, posted back as is.
    pub(crate) request: &'a str,
    /// Why the last attempt failed, shown above the form.
    pub(crate) error: Option<&'a str>,
    /// The user name to fill in again after a failure.
    pub(crate) username: Option<&'a str>,
}

impl View for SigninView<'_> {
    const TEMPLATE: &'static str = "signin.html";
}

/// `totp.html`: the second factor. Posts `code`, `csrf` and `request` to
/// `/oauth/authorize/totp`.
#[derive(Serialize)]
pub(crate) struct TotpView<'a> {
    /// The app's name, shown when given.
    pub(crate) client_name: Option<&'a str>,
    /// Where the form posts.
    pub(crate) action: &'a str,
    /// The name of the hidden field carrying `request` (`request`, or `next`).
    pub(crate) carry: &'a str,
    /// The anti-forgery token.
    pub(crate) csrf: &'a str,
    /// The pending authorization request's handle.
    pub(crate) request: &'a str,
    /// Why the last code was refused.
    pub(crate) error: Option<&'a str>,
}

impl View for TotpView<'_> {
    const TEMPLATE: &'static str = "totp.html";
}

/// One patient of the picker: the radio button's value and its label.
#[derive(Clone, Serialize)]
pub(crate) struct PatientChoice {
    /// The Patient id, the value posted as `patient`.
    pub(crate) id: String,
    /// What the person choosing sees (name, birth date): PHI.
    pub(crate) label: String,
}

impl fmt::Debug for PatientChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientChoice").finish_non_exhaustive()
    }
}

/// `picker.html`: the choice of the patient an app opens. Posts `patient`, `csrf` and
/// `request` to `/oauth/authorize/patient`; says so when `patients` is empty (no form then).
#[derive(Serialize)]
pub(crate) struct PickerView<'a> {
    /// The app's name, shown when given.
    pub(crate) client_name: Option<&'a str>,
    /// The patients to choose from, in the order shown.
    pub(crate) patients: &'a [PatientChoice],
    /// The anti-forgery token.
    pub(crate) csrf: &'a str,
    /// The pending authorization request's handle.
    pub(crate) request: &'a str,
    /// Why the last choice was refused.
    pub(crate) error: Option<&'a str>,
}

impl View for PickerView<'_> {
    const TEMPLATE: &'static str = "picker.html";
}

/// `consent.html`: what the app asks for, one checkbox per scope. Posts the ticked `scope`s,
/// `decision` (`approve` or `deny`), `csrf`, `request` and `patient` (when given) to
/// `/oauth/authorize/consent`. Respond with the redirect URI among the form targets.
#[derive(Serialize)]
pub(crate) struct ConsentView<'a> {
    /// The app's name, shown.
    pub(crate) client_name: &'a str,
    /// The scopes asked for, described.
    pub(crate) scopes: &'a [ScopeItem],
    /// Where the browser goes afterwards, shown ([`super::origin`] of the redirect URI).
    pub(crate) redirect_origin: &'a str,
    /// The anti-forgery token.
    pub(crate) csrf: &'a str,
    /// The pending authorization request's handle.
    pub(crate) request: &'a str,
    /// The chosen patient's id, posted back as a hidden field.
    pub(crate) patient: Option<&'a str>,
    /// The chosen patient, shown.
    pub(crate) patient_label: Option<&'a str>,
    /// Why the last post was refused.
    pub(crate) error: Option<&'a str>,
}

impl View for ConsentView<'_> {
    const TEMPLATE: &'static str = "consent.html";
}

/// `error.html`: the end of a flow that must not send the browser anywhere (an unknown
/// client, a redirect URI that is not registered, an expired request).
#[derive(Debug, Serialize)]
pub(crate) struct ErrorView<'a> {
    /// The heading (and tab title).
    pub(crate) title: &'a str,
    /// What happened, in a sentence, for the person (never internal detail).
    pub(crate) message: &'a str,
}

impl View for ErrorView<'_> {
    const TEMPLATE: &'static str = "error.html";
}
