//! Integration tests of the web client over real HTTP, with the APIs faked at the HTTP boundary
//! (wiremock standing in for the ingress).

mod forms;
mod helpers;
mod pages;
