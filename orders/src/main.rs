use orders::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::server::run_service("orders", Settings::from_env, orders::app::build).await
}
