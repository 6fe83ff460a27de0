use tickets::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::server::run_service("tickets", Settings::from_env, tickets::app::build).await
}
