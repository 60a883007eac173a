//! The HTML pages a browser sees during install (product.md §5): small, self-contained, and
//! escaped — every piece of text, including anything echoed from a query parameter, goes through
//! [`escape`]. A page says what happened and what to do next; it never carries a stack trace, an
//! internal error text or a token.
//!
//! Every page is sent with `Cache-Control: no-store`, `Referrer-Policy: no-referrer` (the callback
//! URL holds an authorization code), `X-Content-Type-Options: nosniff` and a Content-Security-Policy
//! that allows nothing but the inline style.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// Where every install starts.
const START: &str = "Start the install from CX Manager → Extensions → Klaviyo → Install.";

/// One page: a status code, a title and paragraphs of plain text (escaped when rendered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The HTTP status.
    pub status: StatusCode,
    /// The heading (and `<title>`).
    pub title: String,
    /// Plain-text paragraphs.
    pub paragraphs: Vec<String>,
}

impl Page {
    fn new(status: StatusCode, title: &str, paragraphs: &[&str]) -> Self {
        Self {
            status,
            title: title.to_owned(),
            paragraphs: paragraphs.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    /// The HTML document.
    pub fn html(&self) -> String {
        let paragraphs: String = self
            .paragraphs
            .iter()
            .map(|p| format!("<p>{}</p>", escape(p)))
            .collect();
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · Omneo for Klaviyo</title><style>body{{font-family:system-ui,sans-serif;\
             max-width:36rem;margin:4rem auto;padding:0 1rem;line-height:1.5;color:#1d1d1f}}\
             h1{{font-size:1.4rem}}</style></head><body><h1>{title}</h1>{paragraphs}</body></html>",
            title = escape(&self.title),
        )
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (self.status, Html(self.html())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        response
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/oauth/install` without a link (e.g. from the Klaviyo App Marketplace): 400.
pub fn start_from_cx_manager() -> Page {
    Page::new(
        StatusCode::BAD_REQUEST,
        "Install Omneo for Klaviyo from CX Manager",
        &[
            "The Klaviyo extension is installed from your Omneo CX Manager, which connects it to \
             your Omneo account.",
            START,
        ],
    )
}

/// `/oauth/install` with a link that is forged, altered, for another tenant or expired: 403.
pub fn link_invalid() -> Page {
    Page::new(
        StatusCode::FORBIDDEN,
        "This install link is not valid",
        &[
            "Install links are valid for 15 minutes and only for the Omneo account they were made \
             for. This one has expired or is not valid.",
            START,
        ],
    )
}

/// Klaviyo said the user clicked Deny: 200, nothing changed.
pub fn install_cancelled() -> Page {
    Page::new(
        StatusCode::OK,
        "Install cancelled",
        &[
            "You did not allow Omneo to access your Klaviyo account, so nothing was installed or \
             changed.",
            "To install it after all, start again from CX Manager → Extensions → Klaviyo.",
        ],
    )
}

/// Klaviyo redirected back with another OAuth error: 400, naming it.
pub fn authorization_error(code: &str, description: Option<&str>) -> Page {
    let mut paragraphs = vec![format!("Klaviyo reported the error “{code}”.")];
    if let Some(description) = description.filter(|d| !d.trim().is_empty()) {
        paragraphs.push(format!("Klaviyo's explanation: {description}"));
    }
    paragraphs.push(
        "Nothing was installed or changed. Start again from CX Manager → Extensions → Klaviyo; \
         if it happens again, contact Omneo support."
            .to_owned(),
    );
    Page {
        status: StatusCode::BAD_REQUEST,
        title: "Klaviyo did not authorize the install".to_owned(),
        paragraphs,
    }
}

/// The callback without `code`/`state`, or with an unknown, expired or already used state: 400.
pub fn state_invalid() -> Page {
    Page::new(
        StatusCode::BAD_REQUEST,
        "This install session has expired or was already used",
        &[
            "Each install session can be used once, within 10 minutes. Nothing was changed.",
            START,
        ],
    )
}

/// Klaviyo refused the authorization code (`invalid_grant`): 400.
pub fn code_refused() -> Page {
    Page::new(
        StatusCode::BAD_REQUEST,
        "The authorization expired or was already used",
        &[
            "Klaviyo did not accept the authorization, so nothing was changed.",
            "Start again from CX Manager → Extensions → Klaviyo.",
        ],
    )
}

/// Klaviyo refused the app's own request (`invalid_client`, …): a configuration fault, 502.
pub fn app_rejected() -> Page {
    Page::new(
        StatusCode::BAD_GATEWAY,
        "Klaviyo refused this app's request",
        &[
            "This is a problem with the extension's configuration, not with your accounts. \
             Nothing was changed.",
            "Please contact Omneo support.",
        ],
    )
}

/// Klaviyo could not be reached or answered something unreadable: 502.
pub fn klaviyo_unavailable() -> Page {
    Page::new(
        StatusCode::BAD_GATEWAY,
        "Klaviyo could not be reached",
        &[
            "The install could not finish because Klaviyo did not answer. Nothing was changed.",
            "Wait a few minutes, then start again from CX Manager → Extensions → Klaviyo.",
        ],
    )
}

/// The Klaviyo account is already connected to another Omneo tenant: 409. The other tenant is
/// not named — the person installing belongs to this tenant, not to that one.
pub fn account_taken() -> Page {
    Page::new(
        StatusCode::CONFLICT,
        "This Klaviyo account is already connected to another Omneo account",
        &[
            "A Klaviyo account can be connected to only one Omneo account. Nothing was changed.",
            "Sign in to a different Klaviyo account and start again from CX Manager → Extensions → \
             Klaviyo, or uninstall the extension from the other Omneo account first. Omneo support \
             can help if you do not know which account that is.",
        ],
    )
}

/// Our store (or another part of our side) failed: 503, retry.
pub fn our_side_unavailable() -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong on our side",
        &[
            "The install could not finish. Wait a few minutes, then start again from CX Manager → \
             Extensions → Klaviyo.",
            "If it keeps happening, contact Omneo support.",
        ],
    )
}

/// Everything is provisioned: 200.
pub fn installed() -> Page {
    Page::new(
        StatusCode::OK,
        "Klaviyo is connected",
        &[
            "Omneo for Klaviyo is installed: the data sources, the Klaviyo webhook and the Omneo \
             webhooks are set up.",
            "The Omneo webhooks are created disabled: enable them in CX Manager when you are ready \
             to start syncing. You can close this window.",
        ],
    )
}

/// Authorized, but provisioning stopped at `step`: 502 (the step is named, its error is not shown).
pub fn provisioning_failed(step: &str) -> Page {
    Page {
        status: StatusCode::BAD_GATEWAY,
        title: "Klaviyo is connected, but setup did not finish".to_owned(),
        paragraphs: vec![
            format!("Setting up the extension stopped at the step “{step}”."),
            "You do not need to authorize again. Setup resumes where it stopped when it is retried \
             from CX Manager (reprovision); if it fails again, contact Omneo support and mention \
             the step above."
                .to_owned(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere() {
        let page = authorization_error(
            "<script>alert(1)</script>",
            Some("\"><img src=x onerror=alert(1)>&'"),
        );
        let html = page.html();
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;&amp;&#39;"));
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn pages_carry_the_protective_headers() {
        let response = start_from_cx_manager().into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let headers = response.headers();
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    }
}
