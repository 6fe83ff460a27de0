//! The server-rendered web client: HTML pages (askama templates) that call the APIs through the
//! ingress exactly as a browser would, forwarding the browser's cookies both ways.

pub mod api;
pub mod app;
pub mod assets;
pub mod cross_site;
pub mod csrf;
pub mod page;
pub mod routes;
pub mod settings;
pub mod views;
