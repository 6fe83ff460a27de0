//! `/`: the tickets for sale, a page at a time, with a title search (plain links and a GET form:
//! no script needed).

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::{Forwarded, MAX_SEARCH_CHARS, is_id};
use crate::app::AppState;
use crate::page::{PageError, viewer};
use crate::views::{HomePage, TicketRow, render};

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index))
}

/// What the visitor asked for: a title search and the page after a ticket.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub search: Option<String>,
    pub after: Option<String>,
}

impl Listing {
    /// Read leniently: a blank search is none, a search too long is cut, and a page marker that is
    /// not an id (an edited address) starts from the first page.
    pub fn from_query(query: &str) -> Self {
        let mut listing = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "q" => {
                    let search: String = value.trim().chars().take(MAX_SEARCH_CHARS).collect();
                    listing.search = Some(search).filter(|s| !s.is_empty());
                }
                "after" => listing.after = Some(value.into_owned()).filter(|id| is_id(id)),
                _ => {}
            }
        }
        listing
    }

    /// The address of the page after the one ending with ticket `last`.
    pub fn next_href(&self, last: &str) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(search) = &self.search {
            query.append_pair("q", search);
        }
        query.append_pair("after", last);
        format!("/?{}", query.finish())
    }

    /// The address of the first page of the same search.
    pub fn first_href(&self) -> String {
        match &self.search {
            Some(search) => format!(
                "/?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("q", search)
                    .finish()
            ),
            None => "/".to_owned(),
        }
    }
}

async fn index(
    State(state): State<AppState>,
    fwd: Forwarded,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let listing = Listing::from_query(query.as_deref().unwrap_or_default());
    let (viewer, tickets) = tokio::join!(
        viewer(&state.api, &fwd),
        state
            .api
            .tickets(&fwd, listing.search.as_deref(), listing.after.as_deref())
    );
    let (viewer, mut cookies) = viewer?;
    let tickets = tickets.map_err(|err| PageError::from_api(err, &viewer))?;
    cookies.extend(tickets.cookies);
    let next_href = tickets
        .body
        .last()
        .filter(|_| tickets.more)
        .map(|last| listing.next_href(&last.id));
    let page = HomePage {
        viewer,
        tickets: tickets.body.into_iter().map(TicketRow::from).collect(),
        search: listing.search.clone().unwrap_or_default(),
        next_href,
        first_href: listing.after.is_some().then(|| listing.first_href()),
    };
    Ok((cookies, render(StatusCode::OK, &page)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "64b7f0c2a1b2c3d4e5f60718";

    #[test]
    fn a_listing_is_read_leniently_from_the_address() {
        assert_eq!(Listing::from_query(""), Listing::default());
        assert_eq!(
            Listing::from_query(&format!("q=+Rock+%26+roll+&after={ID}&x=1")),
            Listing {
                search: Some("Rock & roll".into()),
                after: Some(ID.into()),
            }
        );
        assert_eq!(Listing::from_query("q=%20&after=nope"), Listing::default());
        let long = "é".repeat(300);
        let search = Listing::from_query(&format!("q={long}"))
            .search
            .unwrap_or_default();
        assert_eq!(search.chars().count(), MAX_SEARCH_CHARS);
    }

    #[test]
    fn page_links_keep_the_search() {
        let listing = Listing {
            search: Some("a&b".into()),
            after: None,
        };
        assert_eq!(listing.next_href(ID), format!("/?q=a%26b&after={ID}"));
        assert_eq!(listing.first_href(), "/?q=a%26b");
        assert_eq!(Listing::default().next_href(ID), format!("/?after={ID}"));
        assert_eq!(Listing::default().first_href(), "/");
    }
}
