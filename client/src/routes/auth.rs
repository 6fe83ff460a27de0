//! `/auth/signup`, `/auth/signin`, `/auth/signout`: the forms post here, we post JSON to the auth
//! API and hand its session cookie to the browser.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde::Deserialize;

use crate::api::Forwarded;
use crate::app::AppState;
use crate::page::{FormAnswer, FormVisit, HtmlForm, PageResult, viewer};
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

async fn signup_form(visit: FormVisit) -> PageResult {
    form_page(visit, AuthMode::SignUp, "", FormAnswer::default()).await
}

async fn signin_form(visit: FormVisit) -> PageResult {
    form_page(visit, AuthMode::SignIn, "", FormAnswer::default()).await
}

async fn signup(visit: FormVisit, HtmlForm(form): HtmlForm<CredentialsForm>) -> PageResult {
    submit(visit, AuthMode::SignUp, form).await
}

async fn signin(visit: FormVisit, HtmlForm(form): HtmlForm<CredentialsForm>) -> PageResult {
    submit(visit, AuthMode::SignIn, form).await
}

/// The form, empty or shown again with what the API said about `email` (the password never is).
async fn form_page(
    visit: FormVisit,
    mode: AuthMode,
    email: &str,
    mut answer: FormAnswer,
) -> PageResult {
    let (viewer, more) = viewer(&visit.state.api, &visit.fwd).await?;
    answer.cookies.extend(more);
    let page = AuthPage::new(
        viewer,
        mode,
        email.to_owned(),
        answer.errors,
        visit.csrf.field().to_owned(),
    );
    Ok((visit.csrf, answer.cookies, render(answer.status, &page)).into_response())
}

async fn submit(visit: FormVisit, mode: AuthMode, form: CredentialsForm) -> PageResult {
    let (api, fwd) = (&visit.state.api, &visit.fwd);
    match api
        .authenticate(fwd, mode, &form.email, &form.password)
        .await
    {
        Ok(reply) => Ok((reply.cookies, Redirect::to("/")).into_response()),
        Err(err) => form_page(visit, mode, &form.email, FormAnswer::refused(err)?).await,
    }
}

/// Shows "Signing user out ..." with a form that a script submits at once (the original signs out
/// on mount); without scripts the visitor presses the button. Signing out on a plain GET would let
/// any page sign our users out with an image tag.
async fn signout_page(visit: FormVisit) -> PageResult {
    let (viewer, cookies) = viewer(&visit.state.api, &visit.fwd).await?;
    let page = SignoutPage {
        viewer,
        csrf_token: visit.csrf.field().to_owned(),
    };
    Ok((visit.csrf, cookies, render(StatusCode::OK, &page)).into_response())
}

async fn signout(State(state): State<AppState>, fwd: Forwarded) -> PageResult {
    let reply = state.api.signout(&fwd).await?;
    Ok((reply.cookies, Redirect::to("/")).into_response())
}
