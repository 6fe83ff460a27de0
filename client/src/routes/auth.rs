//! `/auth/signup`, `/auth/signin`, `/auth/signout`: the forms post here, we post JSON to the auth
//! API and hand its session cookie to the browser.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::api::{ApiError, FormErrors, Forwarded};
use crate::app::AppState;
use crate::csrf::FormToken;
use crate::page::{HtmlForm, PageError, viewer};
use crate::views::{AuthMode, AuthPage, SignoutPage, render};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/signup", get(signup_form).post(signup))
        .route("/auth/signin", get(signin_form).post(signin))
        .route("/auth/signout", get(signout_page).post(signout))
}

/// Missing fields are empty, so the API's validation messages describe them. The CSRF field was
/// checked by `csrf::require_form_token` and is ignored here.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CredentialsForm {
    pub email: String,
    pub password: String,
}

async fn signup_form(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
) -> Result<Response, PageError> {
    form_page(&state, &fwd, AuthMode::SignUp, csrf).await
}

async fn signin_form(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
) -> Result<Response, PageError> {
    form_page(&state, &fwd, AuthMode::SignIn, csrf).await
}

async fn signup(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
    HtmlForm(form): HtmlForm<CredentialsForm>,
) -> Result<Response, PageError> {
    submit(&state, &fwd, AuthMode::SignUp, form, csrf).await
}

async fn signin(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
    HtmlForm(form): HtmlForm<CredentialsForm>,
) -> Result<Response, PageError> {
    submit(&state, &fwd, AuthMode::SignIn, form, csrf).await
}

async fn form_page(
    state: &AppState,
    fwd: &Forwarded,
    mode: AuthMode,
    csrf: FormToken,
) -> Result<Response, PageError> {
    let (viewer, cookies) = viewer(&state.api, fwd).await?;
    let page = AuthPage::new(
        viewer,
        mode,
        String::new(),
        FormErrors::default(),
        csrf.field().to_owned(),
    );
    Ok((csrf, cookies, render(StatusCode::OK, &page)).into_response())
}

/// `csrf` is only used when the form is shown again.
async fn submit(
    state: &AppState,
    fwd: &Forwarded,
    mode: AuthMode,
    form: CredentialsForm,
    csrf: FormToken,
) -> Result<Response, PageError> {
    let result = match mode {
        AuthMode::SignUp => state.api.signup(fwd, &form.email, &form.password).await,
        AuthMode::SignIn => state.api.signin(fwd, &form.email, &form.password).await,
    };
    match result {
        Ok(reply) => Ok((reply.cookies, Redirect::to("/")).into_response()),
        Err(ApiError::Rejected {
            status,
            errors,
            mut cookies,
        }) => {
            let (viewer, more) = viewer(&state.api, fwd).await?;
            cookies.extend(more);
            let page = AuthPage::new(viewer, mode, form.email, errors, csrf.field().to_owned());
            Ok((csrf, cookies, render(status, &page)).into_response())
        }
        Err(err) => Err(err.into()),
    }
}

/// Shows "Signing user out ..." with a form that a script submits at once (the original signs out
/// on mount); without scripts the visitor presses the button. Signing out on a plain GET would let
/// any page sign our users out with an image tag.
async fn signout_page(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
) -> Result<Response, PageError> {
    let (viewer, cookies) = viewer(&state.api, &fwd).await?;
    let page = SignoutPage {
        viewer,
        csrf_token: csrf.field().to_owned(),
    };
    Ok((csrf, cookies, render(StatusCode::OK, &page)).into_response())
}

async fn signout(State(state): State<AppState>, fwd: Forwarded) -> Result<Response, PageError> {
    let reply = state.api.signout(&fwd).await?;
    Ok((reply.cookies, Redirect::to("/")).into_response())
}
