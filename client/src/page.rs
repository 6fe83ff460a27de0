//! What every page handler shares: who is looking, the HTML error pages, and form bodies whose
//! failures are answered in HTML too.

use axum::extract::{Form, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;

use crate::api::{Api, ApiError, FormErrors, Forwarded, SetCookies};
use crate::app::AppState;
use crate::csrf::FormToken;
use crate::views::{ErrorPage, NotFoundPage, Viewer, render};

pub const SIGN_IN_PATH: &str = "/auth/signin";

/// What every page handler answers.
pub type PageResult = Result<Response, PageError>;

/// What a handler of a page with a form starts from: the app, what the browser sent that the APIs
/// must see, and the CSRF token the form carries.
pub struct FormVisit {
    pub state: AppState,
    pub fwd: Forwarded,
    pub csrf: FormToken,
}

impl FromRequestParts<AppState> for FormVisit {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Ok(fwd) = Forwarded::from_request_parts(parts, state).await;
        let csrf = FormToken::from_request_parts(parts, state).await?;
        Ok(Self {
            state: state.clone(),
            fwd,
            csrf,
        })
    }
}

/// Why a page cannot be shown. Every variant becomes an HTML answer, never a panic.
#[derive(Debug)]
pub enum PageError {
    /// A protected page and nobody signed in (or the API said 401).
    SignInRequired,
    NotFound(Viewer),
    /// The API refused what we asked for a reason the page cannot show in place.
    Refused {
        viewer: Viewer,
        status: StatusCode,
        errors: FormErrors,
    },
    Unavailable(Viewer),
    BadGateway(Viewer),
    /// The browser sent a form we cannot read.
    BadForm(StatusCode),
}

impl PageError {
    /// What an API error means for a page that was loading data (not submitting a form): 401 →
    /// sign in, 404 (and 400, the original's answer to malformed ids) → the 404 page.
    pub fn from_api(err: ApiError, viewer: &Viewer) -> Self {
        match err {
            ApiError::Rejected {
                status: StatusCode::UNAUTHORIZED,
                ..
            } => Self::SignInRequired,
            ApiError::Rejected {
                status: StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST,
                ..
            } => Self::NotFound(viewer.clone()),
            ApiError::Rejected { status, errors, .. } => Self::Refused {
                viewer: viewer.clone(),
                status,
                errors,
            },
            ApiError::Unavailable(_) => Self::Unavailable(viewer.clone()),
            ApiError::BadGateway(_) => Self::BadGateway(viewer.clone()),
        }
    }
}

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> Self {
        Self::from_api(err, &Viewer::Unknown)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, page) = match self {
            Self::SignInRequired => return Redirect::to(SIGN_IN_PATH).into_response(),
            Self::NotFound(viewer) => {
                return render(StatusCode::NOT_FOUND, &NotFoundPage { viewer });
            }
            Self::Refused {
                viewer,
                status,
                errors,
            } => (
                status,
                ErrorPage {
                    viewer,
                    heading: "That did not work".into(),
                    message: "The ticketing service refused the request.".into(),
                    errors,
                },
            ),
            Self::Unavailable(viewer) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorPage {
                    viewer,
                    heading: "We'll be right back".into(),
                    message: "The ticketing service is not answering right now. Please try again \
                              in a moment."
                        .into(),
                    errors: FormErrors::default(),
                },
            ),
            Self::BadGateway(viewer) => (
                StatusCode::BAD_GATEWAY,
                ErrorPage {
                    viewer,
                    heading: "Something went wrong on our side".into(),
                    message: "The ticketing service had a problem with this request. Please try \
                              again in a moment."
                        .into(),
                    errors: FormErrors::default(),
                },
            ),
            Self::BadForm(status) => (
                status,
                ErrorPage {
                    viewer: Viewer::Unknown,
                    heading: "That form could not be read".into(),
                    message: "Please go back, reload the page and submit the form again.".into(),
                    errors: FormErrors::default(),
                },
            ),
        };
        render(status, &page)
    }
}

/// What a page with a form shows besides its data: nothing on a first visit (200, no messages),
/// or, once the API refused the form, its status, its messages and the cookies it set.
#[derive(Debug, Default)]
pub struct FormAnswer {
    /// `StatusCode::default()` is 200 OK.
    pub status: StatusCode,
    pub errors: FormErrors,
    pub cookies: SetCookies,
}

impl FormAnswer {
    /// The API's refusal of a form, to show with the form again; any other failure is the page's.
    pub fn refused(err: ApiError) -> Result<Self, PageError> {
        match err {
            ApiError::Rejected {
                status,
                errors,
                cookies,
            } => Ok(Self {
                status,
                errors,
                cookies,
            }),
            err => Err(err.into()),
        }
    }

    /// Like [`Self::refused`], for a form only a signed-in visitor sends: a 401 means the session
    /// ended, so the visitor signs in again.
    pub fn refused_to_member(err: ApiError) -> Result<Self, PageError> {
        match err {
            ApiError::Rejected {
                status: StatusCode::UNAUTHORIZED,
                ..
            } => Err(PageError::SignInRequired),
            err => Self::refused(err),
        }
    }
}

/// The visitor, asked of the API with the browser's cookies, plus any cookies the API set.
pub async fn viewer(api: &Api, fwd: &Forwarded) -> Result<(Viewer, SetCookies), PageError> {
    let reply = api.current_user(fwd).await?;
    Ok((Viewer::from(reply.body), reply.cookies))
}

/// The signed-in visitor, or the redirect to the sign-in page.
pub async fn signed_in_viewer(
    api: &Api,
    fwd: &Forwarded,
) -> Result<(Viewer, SetCookies), PageError> {
    let (viewer, cookies) = viewer(api, fwd).await?;
    if viewer.is_signed_out() {
        return Err(PageError::SignInRequired);
    }
    Ok((viewer, cookies))
}

/// The 404 page for the visitor (the header still shows who is looking; brand only if unknown).
pub async fn not_found(api: &Api, fwd: &Forwarded) -> PageError {
    match viewer(api, fwd).await {
        Ok((viewer, _)) => PageError::NotFound(viewer),
        Err(_) => PageError::NotFound(Viewer::Unknown),
    }
}

/// An urlencoded form body; a body that cannot be read gets an HTML error page (not axum's plain
/// text), with the status axum chose (415 wrong type, 413 too large, 422/400 unreadable).
pub struct HtmlForm<T>(pub T);

impl<S, T> FromRequest<S> for HtmlForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Form::<T>::from_request(req, state).await {
            Ok(Form(value)) => Ok(Self(value)),
            Err(rejection) => {
                tracing::info!(status = %rejection.status(), reason = %rejection.body_text(), "unreadable form");
                Err(PageError::BadForm(rejection.status()))
            }
        }
    }
}
