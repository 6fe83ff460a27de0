use client::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::server::run_service("client", Settings::from_env, client::app::build).await
}
